//! Lastmile dashboard: server-rendered pages the controller mounts. Empty until the dashboard issue lands.
