//! `thex train` (the THE-X conversion pipeline) and `thex eval` (accuracy on a labelled TSV).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use thex_train::{Dataset, EvalReport, RunOptions, Stage, TrainConfig, evaluate, run_pipeline};

/// Arguments of `thex train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training configuration (JSON, see `crates/thex-train/configs/`); fields not given keep
    /// their defaults. The flags below override it.
    #[arg(long, value_name = "JSON")]
    config: Option<PathBuf>,
    /// Base Hugging Face BERT directory (default: the cached `minilm-l6` of `thex model fetch`).
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
    /// Training TSV (GLUE format: `sentence<TAB>label` with a header).
    #[arg(long, value_name = "TSV")]
    train: Option<PathBuf>,
    /// Evaluation TSV, scored after every stage.
    #[arg(long, value_name = "TSV")]
    dev: Option<PathBuf>,
    /// Run directory: one checkpoint per stage, `report.json`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Keep the first K encoder layers of the base model.
    #[arg(long, value_name = "K")]
    layers: Option<usize>,
    /// Rerun this stage and all later ones even if their checkpoints exist
    /// (baseline, relu, softmax, layernorm, distill).
    #[arg(long, value_name = "STAGE")]
    from_stage: Option<Stage>,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    to_stage: Option<Stage>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the run report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `thex eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory with a classification head (e.g. from `thex model fetch --name sst2-thex`).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Labelled TSV (GLUE format), e.g. `../shared/data/sst2/dev.tsv`.
    #[arg(long, value_name = "TSV")]
    data: PathBuf,
    /// Run every sentence through the encrypted engine (client and server in this process) and
    /// compare with the plaintext model: adds agreement and logit errors.
    #[arg(long)]
    encrypted: bool,
    /// Evaluate only the first N examples.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// With `--encrypted`: append each sentence's result to FILE (JSON lines) as it finishes and
    /// skip the sentences already there, so a long run can be stopped and resumed; the report
    /// covers every recorded sentence.
    #[arg(long, value_name = "FILE", requires = "encrypted")]
    records: Option<PathBuf>,
    /// With `--encrypted`: the round protocol, `blinded` (the server blinds every value the
    /// client decrypts) or `thex` (the paper's rounds).
    #[arg(long, default_value = "blinded", requires = "encrypted")]
    rounds: thex_client::Rounds,
    /// With `--records`: run nothing, report on the sentences recorded so far.
    #[arg(long, requires = "records")]
    summary: bool,
    /// Print JSON: `{"accuracy", "n", "per_label", "mcc"}`; with `--encrypted` also
    /// `"agreement", "max_logit_error", "mean_logit_error"` and more.
    #[arg(long)]
    json: bool,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
}

fn effective_config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg: TrainConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading training config {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing training config {}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    if let Some(p) = &args.base {
        cfg.base_model = p.clone();
    } else if cfg.base_model.as_os_str().is_empty() {
        cfg.base_model = thex_model::fetch::default_models_dir()?.join("minilm-l6");
    }
    for (slot, value) in [
        (&mut cfg.train_data, &args.train),
        (&mut cfg.dev_data, &args.dev),
        (&mut cfg.out_dir, &args.out),
    ] {
        if let Some(v) = value {
            *slot = v.clone();
        }
    }
    if let Some(k) = args.layers {
        cfg.layers = k;
    }
    if cfg.train_data.as_os_str().is_empty() || cfg.dev_data.as_os_str().is_empty() {
        anyhow::bail!("no training or evaluation data: give --train and --dev (or a --config)");
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `thex train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = effective_config(&args)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    if !cfg.base_model.join("config.json").is_file() {
        anyhow::bail!(
            "base model {} not found: run `thex model fetch` first or pass --base DIR",
            cfg.base_model.display()
        );
    }
    eprintln!(
        "training {} layer(s) of {} in {} ({} CPU threads)",
        cfg.layers,
        cfg.base_model.display(),
        cfg.out_dir.display(),
        candle_core::utils::get_num_threads()
    );
    let opts = RunOptions {
        from_stage: args.from_stage,
        to_stage: args.to_stage,
    };
    let report = run_pipeline(&cfg, &opts).context("training failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("| stage | dev accuracy | n | stage time (s) | training examples/s |");
    println!("|---|---|---|---|---|");
    for s in &report.stages {
        let rate = s
            .fine_tune
            .as_ref()
            .map_or_else(|| "-".into(), |f| format!("{:.1}", f.examples_per_s));
        println!(
            "| {} | {:.2}% | {} | {:.0} | {rate} |",
            s.stage.dir_name(),
            100.0 * s.dev.accuracy,
            s.dev.n,
            s.seconds,
        );
    }
    if let Some(last) = report.stages.last() {
        println!("final checkpoint: {}", last.dir.display());
    }
    Ok(())
}

/// Runs `thex eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let model = thex_model::load_model_dir(&args.model, &Default::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut data = Dataset::read_tsv(&args.data)?;
    if let Some(n) = args.limit {
        data.examples.truncate(n);
    }
    if args.encrypted {
        let r = crate::encrypted_eval::evaluate(
            &model,
            &data,
            args.records.as_deref(),
            (args.summary, args.quiet || args.json),
            args.rounds,
        )?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        print_report(&r.eval);
        println!(
            "plaintext THE-X model: {:.2}%; encrypted = plaintext label for {:.2}% of {} \
             sentences; logit error max {:.2e}, mean {:.2e}",
            100.0 * r.plaintext_accuracy,
            100.0 * r.agreement,
            r.eval.n,
            r.max_logit_error,
            r.mean_logit_error
        );
        if r.failures > 0 {
            println!(
                "{} sentences gave no encrypted prediction (a value beyond the decryption \
                 headroom; counted as wrong and disagreeing)",
                r.failures
            );
        }
        println!(
            "{} rounds, {:.1} s, {:.1} MB up, {:.1} MB down per sentence (mean)",
            r.rounds,
            r.mean_seconds,
            r.mean_bytes_up / 1e6,
            r.mean_bytes_down / 1e6
        );
        return Ok(());
    }
    let r = evaluate(&model, &data).with_context(|| {
        format!(
            "evaluating {} on {}",
            args.model.display(),
            args.data.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    print_report(&r);
    Ok(())
}

fn print_report(r: &EvalReport) {
    println!(
        "accuracy {:.2}% ({}/{}), MCC {:.3}",
        100.0 * r.accuracy,
        r.per_label.values().map(|s| s.correct).sum::<usize>(),
        r.n,
        r.mcc
    );
    for (label, s) in &r.per_label {
        println!(
            "  label {label}: {:.2}% ({}/{})",
            100.0 * s.accuracy,
            s.correct,
            s.n
        );
    }
}
