//! The CNN's JSON specification (docs/cnn.md): parsing with errors that name the layer and the
//! field, and the canonical JSON written back.

use crate::error::{fail, Error, Result};
use serde_json::{json, Map, Value};

/// One layer of a specification, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    Conv { name: String, out: usize, kernel: usize, stride: usize, padding: usize, bias: bool, module: Option<String> },
    GroupNorm { name: String, groups: usize, eps: f64, module: Option<String> },
    Relu,
    AvgPool { kernel: usize, stride: usize },
    GlobalAvgPool,
    Flatten,
    Dense { name: String, out: usize, bias: bool, module: Option<String> },
    Block { name: String, out: usize, stride: usize, groups: usize, eps: f64, module: Option<String> },
}

impl LayerSpec {
    /// The JSON `type` of the layer.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv { .. } => "conv",
            LayerSpec::GroupNorm { .. } => "groupnorm",
            LayerSpec::Relu => "relu",
            LayerSpec::AvgPool { .. } => "avgpool",
            LayerSpec::GlobalAvgPool => "global_avgpool",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dense { .. } => "dense",
            LayerSpec::Block { .. } => "block",
        }
    }

    /// The layer's name, for layers with parameters.
    pub fn name(&self) -> Option<&str> {
        match self {
            LayerSpec::Conv { name, .. }
            | LayerSpec::GroupNorm { name, .. }
            | LayerSpec::Dense { name, .. }
            | LayerSpec::Block { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The `module` field, when given.
    pub fn module(&self) -> Option<&str> {
        match self {
            LayerSpec::Conv { module, .. }
            | LayerSpec::GroupNorm { module, .. }
            | LayerSpec::Dense { module, .. }
            | LayerSpec::Block { module, .. } => module.as_deref(),
            _ => None,
        }
    }
}

/// A parsed, validated specification (see docs/cnn.md).
#[derive(Debug, Clone, PartialEq)]
pub struct CnnSpec {
    pub(super) input: [usize; 3],
    pub(super) classes: usize,
    pub(super) layers: Vec<LayerSpec>,
}

/// How a layer is named in messages: `layers[3] (conv "conv1")`.
pub(super) fn describe(i: usize, kind: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("layers[{i}] ({kind} {n:?})"),
        None => format!("layers[{i}] ({kind})"),
    }
}

/// The fields of one layer object, read with errors that name the layer and the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    what: String,
}

impl Fields<'_> {
    fn bad(&self, field: &str, why: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("CNN spec: {}: field {field:?} {why}", self.what))
    }
    fn size(&self, field: &str, default: Option<usize>) -> Result<usize> {
        match self.obj.get(field) {
            None => default.ok_or_else(|| self.bad(field, "is missing")),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => Ok(n as usize),
                _ => Err(self.bad(field, format_args!("must be a whole number from 1 to 2^32 - 1, got {v}"))),
            },
        }
    }
    fn padding(&self) -> Result<usize> {
        match self.obj.get("padding") {
            None => Ok(0),
            Some(v) => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(n as usize),
                _ => Err(self.bad("padding", format_args!("must be a whole number >= 0, got {v}"))),
            },
        }
    }
    fn flag(&self, field: &str, default: bool) -> Result<bool> {
        match self.obj.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(field, format_args!("must be true or false, got {v}"))),
        }
    }
    fn eps(&self) -> Result<f64> {
        match self.obj.get("eps") {
            None => Ok(1e-5),
            Some(v) => match v.as_f64() {
                Some(e) if e > 0.0 && e.is_finite() => Ok(e),
                _ => Err(self.bad("eps", format_args!("must be a number > 0, got {v}"))),
            },
        }
    }
    fn text(&self, field: &str, required: bool) -> Result<Option<String>> {
        match self.obj.get(field) {
            None if required => Err(self.bad(field, "is missing")),
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(field, format_args!("must be a non-empty string, got {v}"))),
        }
    }
    fn only(&self, allowed: &[&str]) -> Result<()> {
        for key in self.obj.keys() {
            if key != "type" && !allowed.contains(&key.as_str()) {
                return Err(self.bad(key, format_args!("is not a field of this layer kind (fields: {allowed:?})")));
            }
        }
        Ok(())
    }
}

fn parse_layer(i: usize, v: &Value) -> Result<LayerSpec> {
    let Some(obj) = v.as_object() else { fail!(InvalidArgument, "CNN spec: layers[{i}] is not an object: {v}") };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(t) => fail!(InvalidArgument, "CNN spec: layers[{i}]: field \"type\" must be a string, got {t}"),
        None => fail!(InvalidArgument, "CNN spec: layers[{i}]: field \"type\" is missing"),
    };
    let name = obj.get("name").and_then(Value::as_str);
    let f = Fields { obj, what: describe(i, kind, name) };
    let layer = match kind {
        "conv" => {
            f.only(&["name", "out", "kernel", "stride", "padding", "bias", "module"])?;
            LayerSpec::Conv {
                name: f.text("name", true)?.unwrap_or_default(),
                out: f.size("out", None)?,
                kernel: f.size("kernel", None)?,
                stride: f.size("stride", Some(1))?,
                padding: f.padding()?,
                bias: f.flag("bias", true)?,
                module: f.text("module", false)?,
            }
        }
        "groupnorm" => {
            f.only(&["name", "groups", "eps", "module"])?;
            LayerSpec::GroupNorm {
                name: f.text("name", true)?.unwrap_or_default(),
                groups: f.size("groups", None)?,
                eps: f.eps()?,
                module: f.text("module", false)?,
            }
        }
        "relu" => {
            f.only(&[])?;
            LayerSpec::Relu
        }
        "avgpool" => {
            f.only(&["kernel", "stride"])?;
            let kernel = f.size("kernel", None)?;
            LayerSpec::AvgPool { kernel, stride: f.size("stride", Some(kernel))? }
        }
        "global_avgpool" => {
            f.only(&[])?;
            LayerSpec::GlobalAvgPool
        }
        "flatten" => {
            f.only(&[])?;
            LayerSpec::Flatten
        }
        "dense" => {
            f.only(&["name", "out", "bias", "module"])?;
            LayerSpec::Dense {
                name: f.text("name", true)?.unwrap_or_default(),
                out: f.size("out", None)?,
                bias: f.flag("bias", true)?,
                module: f.text("module", false)?,
            }
        }
        "block" => {
            f.only(&["name", "out", "stride", "groups", "eps", "module"])?;
            LayerSpec::Block {
                name: f.text("name", true)?.unwrap_or_default(),
                out: f.size("out", None)?,
                stride: f.size("stride", Some(1))?,
                groups: f.size("groups", None)?,
                eps: f.eps()?,
                module: f.text("module", false)?,
            }
        }
        other => fail!(
            InvalidArgument,
            "CNN spec: layers[{i}]: field \"type\" is {other:?}, not one of conv, groupnorm, relu, avgpool, \
             global_avgpool, flatten, dense, block"
        ),
    };
    Ok(layer)
}

impl CnnSpec {
    /// Parses and validates a specification (shapes included): every error names the layer and
    /// the field at fault.
    pub fn from_json(text: &str) -> Result<CnnSpec> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("CNN spec: not valid JSON: {e}")))?;
        let Some(obj) = v.as_object() else { fail!(InvalidArgument, "CNN spec: the top level is not an object") };
        for key in obj.keys() {
            if !["input", "classes", "layers"].contains(&key.as_str()) {
                fail!(InvalidArgument, "CNN spec: field {key:?} is not one of input, classes, layers");
            }
        }
        let input = match obj.get("input").and_then(Value::as_array) {
            Some(a)
                if a.len() == 3 && a.iter().all(|d| d.as_u64().is_some_and(|d| (1..=u32::MAX as u64).contains(&d))) =>
            {
                [0, 1, 2].map(|i| a[i].as_u64().unwrap() as usize)
            }
            _ => fail!(
                InvalidArgument,
                "CNN spec: field \"input\" must be [C, H, W] of whole numbers >= 1, got {}",
                obj.get("input").map_or("nothing".to_string(), |v| v.to_string())
            ),
        };
        let classes = match obj.get("classes").and_then(Value::as_u64) {
            Some(c) if (2..=u32::MAX as u64).contains(&c) => c as usize,
            _ => fail!(
                InvalidArgument,
                "CNN spec: field \"classes\" must be a whole number >= 2, got {}",
                obj.get("classes").map_or("nothing".to_string(), |v| v.to_string())
            ),
        };
        let layers = match obj.get("layers").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => {
                a.iter().enumerate().map(|(i, l)| parse_layer(i, l)).collect::<Result<Vec<_>>>()?
            }
            _ => fail!(InvalidArgument, "CNN spec: field \"layers\" must be a non-empty list of layers"),
        };
        let spec = CnnSpec { input, classes, layers };
        super::lower::lower(&spec)?;
        Ok(spec)
    }

    /// The specification as JSON, every default written out; [`CnnSpec::from_json`] reads it back
    /// to an equal spec.
    pub fn to_json(&self) -> String {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let mut v = match l {
                    LayerSpec::Conv { name, out, kernel, stride, padding, bias, .. } => json!({
                        "type": "conv", "name": name, "out": out, "kernel": kernel, "stride": stride,
                        "padding": padding, "bias": bias,
                    }),
                    LayerSpec::GroupNorm { name, groups, eps, .. } => {
                        json!({"type": "groupnorm", "name": name, "groups": groups, "eps": eps})
                    }
                    LayerSpec::Relu => json!({"type": "relu"}),
                    LayerSpec::AvgPool { kernel, stride } => {
                        json!({"type": "avgpool", "kernel": kernel, "stride": stride})
                    }
                    LayerSpec::GlobalAvgPool => json!({"type": "global_avgpool"}),
                    LayerSpec::Flatten => json!({"type": "flatten"}),
                    LayerSpec::Dense { name, out, bias, .. } => {
                        json!({"type": "dense", "name": name, "out": out, "bias": bias})
                    }
                    LayerSpec::Block { name, out, stride, groups, eps, .. } => json!({
                        "type": "block", "name": name, "out": out, "stride": stride, "groups": groups, "eps": eps,
                    }),
                };
                if let Some(m) = l.module() {
                    v["module"] = json!(m);
                }
                v
            })
            .collect();
        json!({"input": self.input, "classes": self.classes, "layers": layers}).to_string()
    }

    /// `[C, H, W]` of the input images.
    pub fn input(&self) -> [usize; 3] {
        self.input
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }
}
