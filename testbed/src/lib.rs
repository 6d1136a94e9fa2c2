//! stub
pub mod geodb;
pub mod link;
pub mod site;
