//! Activations files, as `tlens cka` reads them: one tensor per layer, in file order, samples
//! first; the remaining dimensions are flattened into features.

use super::{ParamSet, Tensor};
use crate::error::{Error, Result};
use crate::tensor::Matrix;

/// Every layer of an activations file (`what` names it in messages) as a matrix over the set's
/// memory. A file with no tensors is [`Error::Format`]; a scalar layer is
/// [`Error::ShapeMismatch`] and a non-float layer [`Error::UnsupportedDtype`], naming the layer.
pub fn activation_layers<'a>(layers: &'a ParamSet, what: &str) -> Result<Vec<Matrix<'a>>> {
    if layers.tensors().is_empty() {
        return Err(Error::Format(format!("{what}: the file holds no tensors")));
    }
    layers.tensors().iter().map(|l| layer_matrix(l, what)).collect()
}

fn layer_matrix<'a>(layer: &'a Tensor, what: &str) -> Result<Matrix<'a>> {
    let name = layer.name();
    let Some((&rows, rest)) = layer.shape().split_first() else {
        return Err(Error::ShapeMismatch(format!(
            "{what}: tensor {name:?} is a scalar; activations need a first dimension of samples"
        )));
    };
    if !layer.is_weight() {
        return Err(Error::UnsupportedDtype(format!(
            "{what}: tensor {name:?} has dtype {}; activations must be F32, F64, F16 or BF16",
            layer.dtype().name()
        )));
    }
    // The product of the other dimensions fits: it is at most the element count.
    let cols: usize = rest.iter().product();
    Matrix::from_host(layer.host()?, rows, cols, cols).map_err(|e| {
        let msg = format!("{what}: layer {name:?}: {e}");
        match e {
            Error::ShapeMismatch(_) => Error::ShapeMismatch(msg),
            Error::DegenerateInput(_) => Error::DegenerateInput(msg),
            Error::NonFinite(_) => Error::NonFinite(msg),
            Error::InvalidArgument(_) => Error::InvalidArgument(msg),
            other => other,
        }
    })
}
