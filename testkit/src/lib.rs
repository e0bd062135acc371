//! The test harness shared by the integration tests (`tests/`) and the benchmark runner
//! (`benches/`), in one place instead of copies: real HTTP/1.1 servers on loopback that play a
//! Worker's upstream ([`upstream`]), and a throwaway redis-server ([`redis`]).

pub mod redis;
pub mod upstream;
