//! Messages of the operator dashboard (`/admin`).

use super::Entry;

pub const ADMIN: &[Entry] = &[];
