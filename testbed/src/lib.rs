//! The world around Lastmile, for the demo and the end-to-end tests: emulated
//! last-mile links ([`link`]), a target web site ([`site`], plain or HTTPS with a
//! private CA from [`tls`]) with the demo shop's product page ([`shop`]) and an HLS
//! stream ([`video`]), small MaxMind
//! databases that place test addresses ([`geodb`]), and a stateful fake of Stripe's API
//! ([`stripe`]). Nothing here is part of the
//! product a user runs in production; it is what the product is measured against.

pub mod geodb;
pub mod hooks;
pub mod link;
pub mod shop;
pub mod site;
pub mod stripe;
pub mod tls;
pub mod udp_link;
pub mod video;
