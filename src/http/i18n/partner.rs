//! Messages of the partner dashboard (`/dashboard`).

use super::Entry;

pub const PARTNER: &[Entry] = &[];
