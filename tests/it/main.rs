//! The integration tests: the daemon against a Coax stand-in on loopback.
//!
//! Everything shares one test binary so it is linked once. Helpers live in
//! [`helpers`]: the daemon fixture (in-process or as a real process), the
//! Coax stand-in, and wait-until helpers with timeouts.

mod helpers;
mod smoke;
