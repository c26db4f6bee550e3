//! The ports: the tower layer every gRPC request passes first, and the HTTP
//! endpoints (with the REST bridge).

pub mod edge;
pub mod http;
pub mod limits;
pub mod tls;
