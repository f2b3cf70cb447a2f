//! How the weights of a set are grouped into modules, by name.

use crate::error::{fail, Error, Result};
use std::borrow::Cow;

/// How tensor names are grouped into modules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Grouping {
    /// The first dot-separated component: `layer1.0.conv1.weight` is in `layer1`.
    #[default]
    First,
    /// The first `d` components (`d >= 1`); shorter names are their own module.
    Depth(usize),
    /// Explicit prefixes, matched on whole components (`layer1` matches `layer1.0.conv1.weight`
    /// but not `layer10.weight`); the longest matching prefix wins.
    Prefixes { prefixes: Vec<String>, unmatched: Unmatched },
    /// Every tensor is its own module.
    Tensor,
    /// Named modules: each listed tensor (tensor name, module name) is in the module given for
    /// it; a weight not listed forms a module of its own, named by the tensor. The built-in CNN
    /// groups its sets so (a GroupNorm joins its conv's module).
    Explicit(Vec<(String, String)>),
}

/// What [`Grouping::Prefixes`] does with a weight that no prefix matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// The tensor forms a module of its own, named by the tensor's full name.
    #[default]
    OwnGroup,
    /// An error naming the tensor.
    Error,
}

impl Grouping {
    /// Parses the CLI form: `first`, `depth:N`, `tensor`, `prefixes:P1,P2,...` (unmatched
    /// tensors form their own modules).
    pub fn parse(text: &str) -> Result<Grouping> {
        let g = if text == "first" {
            Grouping::First
        } else if text == "tensor" {
            Grouping::Tensor
        } else if let Some(d) = text.strip_prefix("depth:") {
            let d: usize = d
                .parse()
                .map_err(|_| Error::InvalidArgument(format!("modules: depth {d:?} is not a positive whole number")))?;
            Grouping::Depth(d)
        } else if let Some(list) = text.strip_prefix("prefixes:") {
            Grouping::Prefixes {
                prefixes: list.split(',').map(str::to_string).collect(),
                unmatched: Unmatched::OwnGroup,
            }
        } else {
            fail!(InvalidArgument, "modules: {text:?} is not one of first, depth:N, tensor, prefixes:P1,P2,...")
        };
        g.validate()?;
        Ok(g)
    }

    pub(super) fn validate(&self) -> Result<()> {
        match self {
            Grouping::Depth(0) => fail!(InvalidArgument, "modules: depth must be at least 1"),
            Grouping::Prefixes { prefixes, .. } => {
                if prefixes.is_empty() {
                    fail!(InvalidArgument, "modules: the list of prefixes is empty");
                }
                if let Some(i) = prefixes.iter().position(|p| p.is_empty()) {
                    fail!(InvalidArgument, "modules: prefix {i} is empty");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The module of tensor `name`.
    pub fn module_of<'n>(&self, name: &'n str) -> Result<Cow<'n, str>> {
        Ok(match self {
            Grouping::First => Cow::Borrowed(name.split('.').next().unwrap_or(name)),
            Grouping::Depth(d) => {
                let end = name.match_indices('.').nth(d.saturating_sub(1)).map_or(name.len(), |(i, _)| i);
                Cow::Borrowed(&name[..end])
            }
            Grouping::Tensor => Cow::Borrowed(name),
            Grouping::Explicit(pairs) => match pairs.iter().find(|(t, _)| t == name) {
                Some((_, m)) => Cow::Owned(m.clone()),
                None => Cow::Borrowed(name),
            },
            Grouping::Prefixes { prefixes, unmatched } => {
                let best = prefixes.iter().filter(|p| prefix_matches(p, name)).max_by_key(|p| p.len());
                match (best, unmatched) {
                    (Some(p), _) => Cow::Owned(p.trim_end_matches('.').to_string()),
                    (None, Unmatched::OwnGroup) => Cow::Borrowed(name),
                    (None, Unmatched::Error) => {
                        fail!(NotFound, "tensor {name:?} matches none of the module prefixes {prefixes:?}")
                    }
                }
            }
        })
    }
}

/// `prefix` matches `name` on whole dot-separated components; a prefix ending in '.' matches
/// any name that starts with it.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if prefix.ends_with('.') {
        return name.starts_with(prefix);
    }
    name == prefix || (name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'.')
}

/// A module: a name and the indices of its weight tensors in the set, in set order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub tensors: Vec<usize>,
    /// Total elements of its tensors.
    pub numel: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_rules() {
        let n = "layer1.0.conv1.weight";
        assert_eq!(Grouping::First.module_of(n).unwrap(), "layer1");
        assert_eq!(Grouping::Depth(2).module_of(n).unwrap(), "layer1.0");
        assert_eq!(Grouping::Depth(9).module_of(n).unwrap(), n);
        assert_eq!(Grouping::Tensor.module_of(n).unwrap(), n);
        let p = Grouping::parse("prefixes:layer1,layer1.0,layer").unwrap();
        assert_eq!(p.module_of(n).unwrap(), "layer1.0");
        assert_eq!(p.module_of("layer10.weight").unwrap(), "layer10.weight");
        let strict = Grouping::Prefixes { prefixes: vec!["layer1".into()], unmatched: Unmatched::Error };
        assert!(matches!(strict.module_of("fc.bias"), Err(Error::NotFound(_))));
        assert!(Grouping::parse("depth:0").is_err());
        assert!(Grouping::parse("depth:x").is_err());
        assert!(Grouping::parse("prefixes:a,,b").is_err());
        assert!(Grouping::parse("second").is_err());
    }
}
