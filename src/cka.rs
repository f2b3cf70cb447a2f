//! Linear CKA (in progress).
use crate::{Context, Matrix, Result};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Estimator {
    Biased = 0,
    Debiased = 1,
}

pub fn cka_matrix(
    _ctx: &Context,
    _xs: &[Matrix],
    _ys: &[Matrix],
    _e: Estimator,
) -> Result<Vec<f64>> {
    Err(crate::Error::Panic("not yet".into()))
}
