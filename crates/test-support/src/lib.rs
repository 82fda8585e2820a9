//! What the integration tests, the fault tests and the benchmark share: an isolated database and
//! vhost per run on this machine's PostgreSQL and RabbitMQ, the application under test, the
//! platform's side of the broker, a webhook receiver, stand-ins of the corporate directories identities come from,
//! and the data every test environment holds. Each concern is a module; everything is
//! re-exported at the root for `use idsync_test_support::*`.

pub mod app;
pub mod broker;
pub mod data;
pub mod directory;
pub mod faults;
pub mod figures;
pub mod isolated;
pub mod proxy;
pub mod receiver;
pub mod services;

pub use app::*;
pub use broker::*;
pub use data::*;
pub use directory::{DirectoryHandle, DirectorySource, DirectoryStandIn, directory_fixture};
pub use faults::*;
pub use figures::*;
pub use isolated::{Isolated, binary, management_get, run};
pub use proxy::FreezingProxy;
pub use receiver::{Answer, Received, Receiver};
pub use services::*;
