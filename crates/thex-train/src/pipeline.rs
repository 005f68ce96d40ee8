//! The THE-X conversion as named, resumable stages (see [`Stage`]).
//!
//! A run directory holds `train_config.json`, one checkpoint directory per stage
//! (`1-baseline`, `2-relu`, `3-softmax`, `4-layernorm`, `5-distill`: `model.safetensors`
//! without the frozen embeddings, `thex.json` whose `base_weights` names the base model's
//! safetensors, `config.json`, tokenizer files, and `stage.json` with the stage's
//! [`StageReport`]) and `report.json` with all of them. A stage whose `stage.json` exists is
//! skipped; [`RunOptions::from_stage`] forces a stage and everything after it to run again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use thex_model::{
    Activation, BertConfig, HeadConfig, LayerNormKind, LoadOptions, LoadedModel, ParamMode,
    Pooling, SaveOptions, SoftmaxConfig, ThexConfig, TrainParams, load_model_dir, save_model_dir,
};

use crate::config::{FineTune, Stage, TrainConfig};
use crate::data::Dataset;
use crate::error::{Result, TrainError, read_json, write_json};
use crate::eval::{EvalReport, evaluate};
use crate::layernorm::{LayerNormFit, distill_layer_norms};
use crate::reciprocal::{self, ReciprocalReport, measure_rows, pretrain_reciprocal};
use crate::train::{Encoded, FineTuneStats, Objective, encode_examples, fine_tune, subsample};

/// File name of a stage's report inside its checkpoint directory.
pub const STAGE_REPORT_FILE: &str = "stage.json";
/// File name of the whole run's report inside the run directory.
pub const RUN_REPORT_FILE: &str = "report.json";
/// File name of the run's configuration inside the run directory.
pub const RUN_CONFIG_FILE: &str = "train_config.json";
/// Tensor-name prefix of the frozen, client-side embeddings (left out of checkpoints).
pub const EMBEDDINGS: &str = "embeddings.";

/// What one stage did and how good its checkpoint is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// Its checkpoint directory.
    pub dir: PathBuf,
    /// Encoder layers.
    pub layers: usize,
    /// The approximations in force after the stage.
    pub thex: ThexConfig,
    /// Accuracy of the saved checkpoint on the evaluation set.
    pub dev: EvalReport,
    /// Wall time of the whole stage (including evaluation).
    pub seconds: f64,
    /// The task fine-tuning, if the stage has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTuneStats>,
    /// Pre-training of `T` (softmax stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reciprocal: Option<ReciprocalReport>,
    /// The LayerNorm fits (layernorm stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norms: Option<Vec<LayerNormFit>>,
}

/// The whole run: its configuration and the report of every finished stage, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The configuration.
    pub config: TrainConfig,
    /// Finished stages.
    pub stages: Vec<StageReport>,
}

/// Which stages [`run_pipeline`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Run this stage and all later ones even if their checkpoints exist.
    pub from_stage: Option<Stage>,
    /// Stop after this stage.
    pub to_stage: Option<Stage>,
}

/// Checkpoint directory of `stage` in the run directory of `cfg`.
pub fn stage_dir(cfg: &TrainConfig, stage: Stage) -> PathBuf {
    cfg.out_dir.join(stage.dir_name())
}

/// The report of a finished stage, or `None` when it has not completed.
pub fn stage_report(cfg: &TrainConfig, stage: Stage) -> Result<Option<StageReport>> {
    let path = stage_dir(cfg, stage).join(STAGE_REPORT_FILE);
    if path.is_file() {
        read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Runs the pipeline: every stage up to `opts.to_stage` that has not completed (or that
/// `opts.from_stage` forces, and everything after a stage that ran). Writes `report.json`
/// after each stage and returns it.
pub fn run_pipeline(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunReport> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::io(&cfg.out_dir, e))?;
    write_json(&cfg.out_dir.join(RUN_CONFIG_FILE), cfg)?;
    let ctx = Context::new(cfg)?;
    let mut report = RunReport {
        config: cfg.clone(),
        stages: Vec::new(),
    };
    let mut must_run = false;
    for stage in Stage::ALL {
        if opts.to_stage.is_some_and(|last| stage > last) {
            break;
        }
        must_run |= opts.from_stage.is_some_and(|first| stage >= first);
        let existing = if must_run {
            None
        } else {
            stage_report(cfg, stage)?
        };
        let done = match existing {
            Some(r) => {
                eprintln!(
                    "stage {stage}: already done (dev accuracy {:.4}), skipping",
                    r.dev.accuracy
                );
                r
            }
            None => {
                must_run = true;
                ctx.run(stage)?
            }
        };
        report.stages.push(done);
        write_json(&cfg.out_dir.join(RUN_REPORT_FILE), &report)?;
    }
    Ok(report)
}

/// What every stage shares: configuration, data, base model paths.
struct Context<'a> {
    cfg: &'a TrainConfig,
    train: Dataset,
    dev: Dataset,
    base_weights: PathBuf,
    base_config: BertConfig,
    device: Device,
}

impl<'a> Context<'a> {
    fn new(cfg: &'a TrainConfig) -> Result<Self> {
        let train = Dataset::read_tsv(&cfg.train_data)?;
        let dev = Dataset::read_tsv(&cfg.dev_data)?;
        for d in [&train, &dev] {
            if d.is_empty() {
                return Err(TrainError::EmptyDataset {
                    path: d.path.clone(),
                });
            }
        }
        let base = cfg
            .base_model
            .canonicalize()
            .map_err(|e| TrainError::io(&cfg.base_model, e))?;
        let base_config = BertConfig::from_file(&base.join("config.json"))?;
        Ok(Context {
            cfg,
            train,
            dev,
            base_weights: base.join("model.safetensors"),
            base_config,
            device: Device::Cpu,
        })
    }

    fn head(&self) -> HeadConfig {
        HeadConfig {
            pooling: Pooling::Mean,
            labels: self.cfg.labels.clone(),
        }
    }

    /// Approximations in force after `stage`.
    fn thex_after(&self, stage: Stage) -> Result<ThexConfig> {
        let mut t = ThexConfig::exact(&self.base_config)?;
        t.head = Some(self.head());
        t.base_weights = Some(self.base_weights.to_string_lossy().into_owned());
        if stage >= Stage::Relu {
            t.activation = Activation::Relu;
        }
        if stage >= Stage::Softmax {
            t.softmax = SoftmaxConfig::Thex(self.cfg.softmax);
        }
        if stage >= Stage::Layernorm {
            t.layer_norm = LayerNormKind::Affine;
        }
        Ok(t)
    }

    fn previous_dir(&self, stage: Stage, needs: Stage) -> Result<PathBuf> {
        let dir = stage_dir(self.cfg, needs);
        if !dir.join(STAGE_REPORT_FILE).is_file() {
            return Err(TrainError::MissingStage {
                stage: stage.name().into(),
                needs: needs.name().into(),
                path: dir,
            });
        }
        Ok(dir)
    }

    /// Loads the model a stage starts from, trainable (embeddings frozen).
    fn load_student(&self, stage: Stage, varmap: &VarMap) -> Result<LoadedModel> {
        let mode = ParamMode::Train(TrainParams {
            varmap: varmap.clone(),
            frozen_prefixes: vec![EMBEDDINGS.into()],
            init_missing: stage == Stage::Baseline,
            // The new classifier: the run's seed makes it (and the run) reproducible.
            init_seed: Some(self.cfg.seed),
        });
        let (dir, layers) = match stage.previous() {
            None => (self.cfg.base_model.clone(), Some(self.cfg.layers)),
            Some(prev) => (self.previous_dir(stage, prev)?, None),
        };
        Ok(load_model_dir(
            &dir,
            &LoadOptions {
                layers,
                thex: Some(self.thex_after(stage)?),
                mode,
                device: self.device.clone(),
            },
        )?)
    }

    fn load_inference(&self, dir: &Path) -> Result<LoadedModel> {
        Ok(load_model_dir(
            dir,
            &LoadOptions {
                device: self.device.clone(),
                ..Default::default()
            },
        )?)
    }

    fn examples(&self, model: &LoadedModel, max: usize, salt: u64) -> Result<Vec<Encoded>> {
        let picked = subsample(&self.train, max, self.cfg.seed.wrapping_add(salt));
        encode_examples(model, &picked, self.cfg.max_len, self.cfg.labels.len())
    }

    fn train(
        &self,
        student: &LoadedModel,
        varmap: &VarMap,
        settings: &FineTune,
        stage: Stage,
        objective: Objective<'_>,
    ) -> Result<FineTuneStats> {
        let data = self.examples(student, settings.max_examples, stage.number() as u64)?;
        let train_t = self.cfg.softmax_stage.reciprocal.train_during_fine_tune;
        let vars: Vec<Var> = {
            let map = varmap
                .data()
                .lock()
                .map_err(|_| TrainError::InvalidConfig("poisoned varmap".into()))?;
            let mut named: Vec<(&String, &Var)> = map
                .iter()
                .filter(|(n, _)| train_t || !n.starts_with(reciprocal::PREFIX))
                .collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            named.into_iter().map(|(_, v)| v.clone()).collect()
        };
        fine_tune(
            &student.model,
            vars,
            &data,
            settings,
            self.cfg,
            objective,
            stage.name(),
        )
    }

    fn run(&self, stage: Stage) -> Result<StageReport> {
        let start = Instant::now();
        let dir = stage_dir(self.cfg, stage);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
        eprintln!("stage {stage}: starting ({})", dir.display());
        let varmap = VarMap::new();
        let mut fine = None;
        let mut reciprocal_report = None;
        let mut ln_fits = None;
        let student = match stage {
            Stage::Baseline | Stage::Relu => {
                let s = self.load_student(stage, &varmap)?;
                let settings = self.cfg.fine_tune(stage).cloned().unwrap_or_default();
                fine = Some(self.train(&s, &varmap, &settings, stage, Objective::CrossEntropy)?);
                s
            }
            Stage::Softmax => {
                let prev = self.load_inference(&self.previous_dir(stage, Stage::Relu)?)?;
                let r = &self.cfg.softmax_stage.reciprocal;
                let probe = self.examples(&prev, r.probe_examples, 100)?;
                let seqs: Vec<Vec<u32>> = probe.into_iter().map(|e| e.ids).collect();
                let rows = measure_rows(&prev.model, &seqs, &self.cfg.softmax)?;
                let (t_vars, rep) =
                    pretrain_reciprocal(&rows, &self.cfg.softmax, r, self.cfg.seed, &self.device)?;
                eprintln!(
                    "stage softmax: T pre-trained on {} rows in {:.1}s: s quantiles {:?}, softmax MSE {:.3e} -> {:.3e}, relative error {:?}",
                    rep.measured_rows,
                    rep.seconds,
                    rep.sum_quantiles,
                    rep.mse_init,
                    rep.mse_final,
                    rep.relative_error
                );
                reciprocal_report = Some(rep);
                let s = self.load_student(stage, &t_vars)?;
                let settings = &self.cfg.softmax_stage.fine_tune;
                fine = Some(self.train(&s, &t_vars, settings, stage, Objective::CrossEntropy)?);
                s
            }
            Stage::Layernorm => {
                let prev_dir = self.previous_dir(stage, Stage::Softmax)?;
                let teacher = self.load_inference(&prev_dir)?;
                let s = self.load_student(stage, &varmap)?;
                let sample = self.examples(&s, self.cfg.layernorm.examples, 200)?;
                let seqs: Vec<Vec<u32>> = sample.into_iter().map(|e| e.ids).collect();
                let fits = distill_layer_norms(&s.model, &varmap, &teacher.model, &seqs)?;
                for f in &fits {
                    eprintln!(
                        "stage layernorm: {} fitted on {} tokens, MSE {:.4e} (relative {:.4e})",
                        f.name, f.tokens, f.mse, f.relative_mse
                    );
                }
                ln_fits = Some(fits);
                s
            }
            Stage::Distill => {
                let teacher = self.load_inference(&self.previous_dir(stage, Stage::Baseline)?)?;
                let s = self.load_student(stage, &varmap)?;
                let d = &self.cfg.distill;
                let objective = Objective::Distill {
                    teacher: &teacher.model,
                    temperature: d.temperature,
                    alpha: d.alpha,
                };
                fine = Some(self.train(&s, &varmap, &d.fine_tune, stage, objective)?);
                s
            }
        };
        save_model_dir(
            &student.model,
            &student.dir,
            &dir,
            &SaveOptions {
                exclude_prefixes: vec![EMBEDDINGS.into()],
            },
        )?;
        let saved = self.load_inference(&dir)?;
        let dev = evaluate(&saved, &self.dev)?;
        let report = StageReport {
            stage,
            dir: dir.clone(),
            layers: saved.model.layers().len(),
            thex: saved.model.thex().clone(),
            dev,
            seconds: start.elapsed().as_secs_f64(),
            fine_tune: fine,
            reciprocal: reciprocal_report,
            layer_norms: ln_fits,
        };
        write_json(&dir.join(STAGE_REPORT_FILE), &report)?;
        eprintln!(
            "stage {stage}: done in {:.0}s, dev accuracy {:.4} ({} examples){}",
            report.seconds,
            report.dev.accuracy,
            report.dev.n,
            report
                .fine_tune
                .as_ref()
                .map(|f| format!(", training {:.1} examples/s", f.examples_per_s))
                .unwrap_or_default()
        );
        Ok(report)
    }
}
