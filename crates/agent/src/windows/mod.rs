//! Windows only: the service wrapper, the registry in both views, the machine facts Windows
//! reports (OS, language, service pack, installed updates and programs, disk, pending restart)
//! and the job object that contains an installer's process tree. What the raw values mean is
//! decided in `core::facts::windows`; PE file versions are read by the portable `pack::pe`.

pub mod job;
pub mod registry;
pub mod service;
pub mod system;
