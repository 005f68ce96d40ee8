//! Where a model's parameters come from (a safetensors checkpoint, a training `VarMap`, fresh
//! initialisation) and the record of which named tensors a model uses, for saving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::error::{ModelError, Result};

/// Optional prefix of Hugging Face task checkpoints (`BertForSequenceClassification`, ...).
const HF_PREFIX: &str = "bert.";

/// Reads every tensor of a safetensors file. Names with the Hugging Face `bert.` prefix are
/// stored without it, so models always ask for `embeddings.…` and `encoder.layer.{i}.…`.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let raw = candle_core::safetensors::load(path, device)?;
    let mut out = HashMap::with_capacity(raw.len());
    for (name, tensor) in raw {
        match name.strip_prefix(HF_PREFIX) {
            Some(short) if !short.is_empty() => out.insert(short.to_string(), tensor),
            _ => out.insert(name, tensor),
        };
    }
    Ok(out)
}

/// Writes named tensors to a safetensors file.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let map: HashMap<&str, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.detach()))
        .collect();
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

/// What the loaded parameters become.
#[derive(Debug, Clone, Default)]
pub enum ParamMode {
    /// Plain tensors for inference; every tensor must be in the source.
    #[default]
    Inference,
    /// Trainable: parameters become `Var`s in `varmap` (those already in it are reused, so a
    /// separately pre-trained piece such as the reciprocal network can be put there first).
    Train(TrainParams),
}

/// Settings for building a trainable model.
#[derive(Clone)]
pub struct TrainParams {
    /// Receives every non-frozen parameter as a `Var`; hand `varmap.all_vars()` to the optimizer.
    pub varmap: VarMap,
    /// Parameters whose name starts with one of these stay plain tensors (no gradient), e.g.
    /// `"embeddings."` (the client-side table) or `"reciprocal."` (the pre-trained `T`).
    pub frozen_prefixes: Vec<String>,
    /// Create parameters the source lacks from the module's initialiser (new classifier, new
    /// reciprocal network); otherwise they are a [`ModelError::MissingTensor`].
    pub init_missing: bool,
    /// Seed of those new parameters' random values (each drawn from its own stream, keyed by
    /// the seed and the parameter's name): the same seed gives the same model. `None` uses
    /// candle's unseeded generator.
    pub init_seed: Option<u64>,
}

impl std::fmt::Debug for TrainParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vars = self.varmap.data().lock().map(|d| d.len()).unwrap_or(0);
        f.debug_struct("TrainParams")
            .field("varmap", &format_args!("VarMap({vars} vars)"))
            .field("frozen_prefixes", &self.frozen_prefixes)
            .field("init_missing", &self.init_missing)
            .field("init_seed", &self.init_seed)
            .finish()
    }
}

impl TrainParams {
    fn is_frozen(&self, name: &str) -> bool {
        self.frozen_prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }
}

/// The `VarBuilder` backend behind model construction: serves tensors by name, checks shapes,
/// records which tensors were used, and keeps the first typed error.
#[derive(Debug)]
struct Store {
    source: HashMap<String, Tensor>,
    mode: ParamMode,
    used: Mutex<Vec<(String, Tensor)>>,
    error: Mutex<Option<ModelError>>,
}

impl Store {
    fn fail(&self, err: ModelError) -> candle_core::Error {
        let msg = err.to_string();
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(err);
        candle_core::Error::Msg(msg)
    }

    fn record(&self, name: &str, t: &Tensor) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if !used.iter().any(|(n, _)| n == name) {
            used.push((name.to_string(), t.clone()));
        }
    }

    fn check_shape(&self, name: &str, t: &Tensor, s: &Shape) -> candle_core::Result<()> {
        if t.shape() != s {
            return Err(self.fail(ModelError::WrongShape {
                name: name.to_string(),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }));
        }
        Ok(())
    }

    fn fetch(
        &self,
        s: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let ParamMode::Train(tp) = &self.mode {
            let existing = tp
                .varmap
                .data()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned();
            if let Some(var) = existing {
                self.check_shape(name, var.as_tensor(), &s)?;
                return Ok(var.as_tensor().clone());
            }
        }
        let base = match self.source.get(name) {
            Some(t) => {
                self.check_shape(name, t, &s)?;
                Some(t.to_dtype(dtype)?.to_device(dev)?)
            }
            None => None,
        };
        let tensor = match (&self.mode, base) {
            (ParamMode::Inference, Some(t)) => t,
            (ParamMode::Train(tp), Some(t)) if tp.is_frozen(name) => t,
            (ParamMode::Train(tp), Some(t)) => {
                // A copy, so training never writes into the source tensors.
                let var = Var::from_tensor(&t.copy()?)?;
                self.insert_var(tp, name, &var);
                var.as_tensor().clone()
            }
            (ParamMode::Train(tp), None) if tp.init_missing => {
                let var = match tp.init_seed {
                    Some(seed) => seeded_var(init, &s, dtype, dev, seed ^ name_hash(name))?,
                    None => init.var(s, dtype, dev)?,
                };
                if tp.is_frozen(name) {
                    var.as_tensor().detach()
                } else {
                    self.insert_var(tp, name, &var);
                    var.as_tensor().clone()
                }
            }
            _ => {
                return Err(self.fail(ModelError::MissingTensor {
                    name: name.to_string(),
                }));
            }
        };
        Ok(tensor)
    }

    fn insert_var(&self, tp: &TrainParams, name: &str, var: &Var) {
        tp.varmap
            .data()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), var.clone());
    }
}

/// FNV-1a hash of a parameter name: its own random stream under one seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `init` realized with a ChaCha8 stream seeded by `seed` (the distributions of candle's
/// [`Init::var`]: constants, uniform, normal by Box-Muller, Kaiming with its fan and gain).
fn seeded_var(
    init: Init,
    s: &Shape,
    dtype: DType,
    dev: &Device,
    seed: u64,
) -> candle_core::Result<Var> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = s.elem_count();
    let mut uniform = |lo: f64, up: f64| -> Vec<f64> {
        (0..n)
            .map(|_| lo + (up - lo) * rng.r#gen::<f64>())
            .collect()
    };
    let normal = |mean: f64, std: f64, u: Vec<f64>| -> Vec<f64> {
        // Box-Muller on pairs of uniforms (1 - u keeps the logarithm finite).
        u.chunks(2)
            .flat_map(|p| {
                let (a, b) = (1.0 - p[0], p.get(1).copied().unwrap_or(0.5));
                let r = (-2.0 * a.ln()).sqrt();
                let t = std::f64::consts::TAU * b;
                [r * t.cos(), r * t.sin()]
            })
            .take(n)
            .map(|z| mean + std * z)
            .collect()
    };
    let values = match init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(mean, stdev, uniform(0.0, 1.0)),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(s) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std, uniform(0.0, 1.0)),
            }
        }
    };
    Var::from_tensor(&Tensor::from_vec(values, s.clone(), dev)?.to_dtype(dtype)?)
}

/// Shares a [`Store`] between the `VarBuilder` and the code that reads its record afterwards.
#[derive(Debug, Clone)]
struct SharedStore(Arc<Store>);

impl SimpleBackend for SharedStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.0.fetch(s, name, h, dtype, dev)?;
        self.0.record(name, &t);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.source.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(self.0.fail(ModelError::MissingTensor {
                name: name.to_string(),
            })),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.source.contains_key(name)
            || matches!(&self.0.mode, ParamMode::Train(tp)
                if tp.varmap.data().lock().unwrap_or_else(PoisonError::into_inner).contains_key(name))
    }
}

/// Builds a module from named tensors and returns it with the list of tensors it took.
///
/// `build` receives a `VarBuilder` (f32, on `device`); errors about missing or mis-shaped
/// tensors come back as [`ModelError::MissingTensor`] / [`ModelError::WrongShape`].
pub fn build_with<T>(
    source: HashMap<String, Tensor>,
    mode: ParamMode,
    device: &Device,
    build: impl FnOnce(VarBuilder<'_>) -> Result<T>,
) -> Result<(T, Vec<(String, Tensor)>)> {
    let store = Arc::new(Store {
        source,
        mode,
        used: Mutex::new(Vec::new()),
        error: Mutex::new(None),
    });
    let vb = VarBuilder::from_backend(
        Box::new(SharedStore(store.clone())),
        DType::F32,
        device.clone(),
    );
    let result = build(vb);
    let typed = store
        .error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(err) = typed {
        return Err(err);
    }
    let built = result?;
    let used = std::mem::take(&mut *store.used.lock().unwrap_or_else(PoisonError::into_inner));
    Ok((built, used))
}
