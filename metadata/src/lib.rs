//! `kmeta-metadata`: the pure, deterministic core of kmeta.
//!
//! It holds the metadata records ([`record`]), the image they build ([`image`]), the checks
//! every image must pass ([`invariants`]) and every decision the controller makes
//! ([`controller`]). Nothing here waits, reads a clock, touches a socket or file, or draws a
//! random number: time and fresh ids come in as arguments, and work goes out as data (records,
//! replies, the next time to wake up). The runtime in the `kmeta` crate does all of that.
//!
//! The rule that keeps it simple: decisions generate records; only
//! [`MetadataImage::replay`](image::MetadataImage::replay) changes state.

#![warn(missing_docs)]

pub mod acl;
pub mod controller;
pub mod delta;
pub mod error;
pub mod image;
pub mod invariants;
pub mod record;
pub mod types;

pub use error::{ApiError, ErrorCode};
pub use image::MetadataImage;
pub use record::MetadataRecord;
pub use types::*;
