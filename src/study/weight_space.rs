//! PLACEHOLDER (being written): the sections of this family.

use super::{Inputs, Progress, Section, Size};
use crate::error::Result;

/// This family's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {}

impl Settings {
    pub fn new(_size: Size) -> Settings {
        Settings {}
    }
}

/// Every section of this family, in report order.
pub(super) fn sections(_inputs: &Inputs, _progress: Progress) -> Result<Vec<Section>> {
    Ok(vec![])
}
