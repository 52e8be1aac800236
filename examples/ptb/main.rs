//! Word-level language modelling on Penn Treebank with candle. One LSTM is trained twice with
//! the same seed and schedule, once with a softmax and once with a sigsoftmax output layer
//! (both through the same fused cross-entropy). The runs are compared by perplexity and by the
//! numerical rank of the log-probability matrix over validation contexts.
//!
//! Softmax's log-probability matrix `log P = H W^T + 1 b^T - c 1^T` (hidden states `H`,
//! output weight `W` and bias `b`, per-context normalizer `c`) has rank at most `d + 2` for
//! hidden width `d` (`d + 1` without the bias); sigsoftmax's is not bounded that way.
//!
//! ```text
//! scripts/fetch-ptb.sh
//! cargo run --release --features candle --example ptb -- --dims 16,32,64,128 --json out.json
//! cargo run --release --features candle --example ptb -- --smoke
//! ```

mod data;
mod model;
mod rank;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device};
use clap::Parser;
use sigsoftmax::{cpu, Activation, Shape};

use data::{Batches, Corpus};
use model::{LanguageModel, TrainConfig};

#[derive(Parser, Debug)]
#[command(about = "Train a small LSTM language model on PTB with softmax and sigsoftmax")]
struct Args {
    /// Folder with train.txt, valid.txt and test.txt (scripts/fetch-ptb.sh writes them).
    #[arg(long, default_value = "data/ptb")]
    data: PathBuf,
    /// Embedding and hidden widths d to train, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    dims: Vec<usize>,
    /// Output normalizations to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "softmax,sigsoftmax")]
    activations: Vec<String>,
    /// Passes over the training windows, with the validation perplexity measured after each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Training windows per epoch (all when 0; PTB has 1328 windows of 20 x 35, the last shorter).
    #[arg(long, default_value_t = 150)]
    max_batches: usize,
    /// Validation and test windows evaluated (all when 0).
    #[arg(long, default_value_t = 0)]
    eval_batches: usize,
    /// Parallel token streams per window.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// Time steps per window (truncated backpropagation through time).
    #[arg(long, default_value_t = 35)]
    bptt: usize,
    /// AdamW learning rate, constant.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the weight initialization, shared by every run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Validation contexts in the log-probability matrix whose rank is measured (0: skip).
    #[arg(long, default_value_t = 512)]
    rank_contexts: usize,
    /// `cpu`, or `cuda` (needs a build with the `candle-cuda` feature and a GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the training loss every this many windows (0: never).
    #[arg(long, default_value_t = 25)]
    log_every: usize,
    /// Append one JSON object per run to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// CI check: train d=16 sigsoftmax on 60 short windows and fail unless the loss falls.
    #[arg(long)]
    smoke: bool,
}

/// Measurements of one training run.
struct RunResult {
    activation: Activation,
    dim: usize,
    train_loss: f64,
    valid_ppl: f64,
    /// Validation perplexity after each epoch; the last one is `valid_ppl`.
    valid_ppl_per_epoch: Vec<f64>,
    test_ppl: f64,
    seconds_per_batch: f64,
    train_seconds: f64,
    batches_per_epoch: usize,
    singular_values: Vec<f64>,
    /// Relative cut-off for the numerical rank: numpy's `matrix_rank` default,
    /// `max(rows, cols) * eps` (times the largest singular value).
    rank_tolerance: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ptb: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let activations = parse_activations(&args.activations)?;
    check_args(args)?;
    if let Some(path) = &args.json {
        // Opened before training, so that a bad path fails now and not after the first run.
        open_json(path)?;
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).map_err(|e| {
            let hint = if cfg!(feature = "candle-cuda") {
                "check that a GPU is visible (nvidia-smi)"
            } else {
                "rebuild the example with --features candle-cuda"
            };
            format!("--device cuda: {e}; {hint}")
        })?,
        other => return Err(format!("invalid --device `{other}`; use cpu or cuda")),
    };
    let corpus = Corpus::load(&args.data)?;
    check_corpus_fits(args, &corpus)?;
    eprintln!(
        "PTB: {} words in the vocabulary; {} / {} / {} tokens in train / valid / test; device {device:?}, {} rayon threads",
        corpus.words.len(),
        corpus.train.len(),
        corpus.valid.len(),
        corpus.test.len(),
        rayon::current_num_threads()
    );
    if args.smoke {
        return smoke(&corpus, &device).map_err(|e| e.to_string());
    }

    let config = TrainConfig {
        batch_size: args.batch_size,
        bptt: args.bptt,
        learning_rate: args.lr,
        clip_norm: args.clip,
        max_batches: (args.max_batches > 0).then_some(args.max_batches),
    };
    let mut results = Vec::new();
    for &dim in &args.dims {
        for &activation in &activations {
            let result = train_and_measure(args, &corpus, &config, dim, activation, &device)
                .map_err(|e| format!("{} d={dim}: {e}", activation.name()))?;
            print_result(&result);
            if let Some(path) = &args.json {
                append_json(path, args, &config, &result, &device)?;
            }
            results.push(result);
        }
    }
    println!();
    print_table(&results);
    Ok(ExitCode::SUCCESS)
}

fn parse_activations(names: &[String]) -> Result<Vec<Activation>, String> {
    names
        .iter()
        .map(|name| match name.as_str() {
            "softmax" => Ok(Activation::Softmax),
            "sigsoftmax" => Ok(Activation::Sigsoftmax),
            other => Err(format!(
                "invalid activation `{other}`; use softmax or sigsoftmax"
            )),
        })
        .collect()
}

/// Rejects settings that would fail or make no sense, before any data is read.
fn check_args(args: &Args) -> Result<(), String> {
    if args.dims.is_empty() || args.dims.contains(&0) {
        return Err(format!(
            "invalid --dims {:?}; every width must be at least 1",
            args.dims
        ));
    }
    if args.batch_size == 0 {
        return Err("invalid --batch-size 0; use at least 1 stream".into());
    }
    if args.bptt == 0 {
        return Err("invalid --bptt 0; use at least 1 time step".into());
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(format!(
            "invalid --lr {}; use a positive learning rate",
            args.lr
        ));
    }
    if !(args.clip.is_finite() && args.clip > 0.0) {
        return Err(format!(
            "invalid --clip {}; use a positive gradient-norm bound",
            args.clip
        ));
    }
    Ok(())
}

/// Rejects settings that the loaded splits cannot serve: streams of fewer than two tokens, or
/// more rank contexts than validation tokens or words. The rank routine needs a matrix at
/// least as wide as it is tall.
fn check_corpus_fits(args: &Args, corpus: &Corpus) -> Result<(), String> {
    for (split, tokens) in [
        ("train", &corpus.train),
        ("valid", &corpus.valid),
        ("test", &corpus.test),
    ] {
        if tokens.len() / args.batch_size < 2 {
            return Err(format!(
                "--batch-size {} leaves fewer than 2 tokens per stream in the {split} split \
                 ({} tokens); use at most {}",
                args.batch_size,
                tokens.len(),
                tokens.len() / 2
            ));
        }
    }
    let max_contexts = corpus.valid.len().min(corpus.words.len());
    if args.rank_contexts > max_contexts {
        return Err(format!(
            "invalid --rank-contexts {}; use at most {max_contexts} (the validation tokens and the \
             vocabulary size bound it), or 0 to skip the rank",
            args.rank_contexts
        ));
    }
    Ok(())
}

fn train_and_measure(
    args: &Args,
    corpus: &Corpus,
    config: &TrainConfig,
    dim: usize,
    activation: Activation,
    device: &Device,
) -> candle_core::Result<RunResult> {
    let model = LanguageModel::new(corpus.words.len(), dim, args.seed, device)?;
    let mut optimizer = model::optimizer(&model, config)?;
    let batches = Batches::new(&corpus.train, config.batch_size, config.bptt);
    let eval_batches = (args.eval_batches > 0).then_some(args.eval_batches);
    let (mut train_seconds, mut trained, mut train_loss) = (0.0, 0, f64::NAN);
    let mut valid_ppl_per_epoch = Vec::new();
    for epoch in 0..args.epochs {
        let stats = model::train_epoch(
            &model,
            &mut optimizer,
            &batches,
            activation,
            config,
            device,
            args.log_every,
        )?;
        eprintln!(
            "{} d={dim} epoch {}: train loss {:.3} (ppl {:.1}) over {} windows in {:.1}s",
            activation.name(),
            epoch + 1,
            stats.mean_loss,
            stats.mean_loss.exp(),
            stats.batches,
            stats.seconds
        );
        train_seconds += stats.seconds;
        trained += stats.batches;
        train_loss = stats.mean_loss;

        // Evaluation leaves the weights and the training order alone, so measuring every
        // epoch does not change the final numbers.
        let valid = model::evaluate(
            &model,
            &corpus.valid,
            activation,
            config,
            eval_batches,
            device,
        )?;
        if epoch + 1 < args.epochs {
            eprintln!(
                "{} d={dim} epoch {}: valid ppl {:.2}",
                activation.name(),
                epoch + 1,
                valid.exp()
            );
        }
        valid_ppl_per_epoch.push(valid.exp());
    }
    let valid_ppl = valid_ppl_per_epoch.last().copied().unwrap_or(f64::NAN);
    let test = model::evaluate(
        &model,
        &corpus.test,
        activation,
        config,
        eval_batches,
        device,
    )?;
    let singular_values = if args.rank_contexts > 0 {
        log_probability_spectrum(
            &model,
            &corpus.valid,
            args.rank_contexts,
            activation,
            device,
        )?
    } else {
        Vec::new()
    };
    Ok(RunResult {
        activation,
        dim,
        train_loss,
        valid_ppl,
        valid_ppl_per_epoch,
        test_ppl: test.exp(),
        seconds_per_batch: train_seconds / trained.max(1) as f64,
        train_seconds,
        batches_per_epoch: batches.len(),
        singular_values,
        rank_tolerance: args.rank_contexts.max(corpus.words.len()) as f64 * f64::EPSILON,
    })
}

/// Singular values of the `contexts x vocab` matrix of log-probabilities after each of the
/// first `contexts` validation tokens. The logits are recomputed in f64 from the f32 hidden
/// states and output layer (exact conversions), so a softmax matrix meets its rank bound up to
/// f64 rounding instead of f32 noise.
fn log_probability_spectrum(
    model: &LanguageModel,
    tokens: &[u32],
    contexts: usize,
    activation: Activation,
    device: &Device,
) -> candle_core::Result<Vec<f64>> {
    let hidden = model::context_states(model, tokens, contexts, device)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?;
    let (weight, bias) = model.output_layer();
    let weight = weight.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let mut logits = hidden.matmul(&weight.t()?)?;
    if let Some(bias) = bias {
        let bias = bias.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        logits = logits.broadcast_add(&bias)?;
    }
    let vocab = logits.dim(1)?;
    let logits: Vec<f64> = logits.flatten_all()?.to_vec1()?;
    let mut log_probs = vec![0.0f64; logits.len()];
    let shape = Shape::new(contexts, vocab).map_err(candle_core::Error::wrap)?;
    cpu::log_forward(activation, shape, &logits, &mut log_probs)
        .map_err(candle_core::Error::wrap)?;
    let rows = log_probs.chunks_exact(vocab).map(<[f64]>::to_vec).collect();
    Ok(rank::singular_values(rows))
}

fn print_result(result: &RunResult) {
    println!(
        "{:>10} d={:<4} train loss {:.3}  valid ppl {:>8.2}  test ppl {:>8.2}  {:.3} s/window",
        result.activation.name(),
        result.dim,
        result.train_loss,
        result.valid_ppl,
        result.test_ppl,
        result.seconds_per_batch
    );
    if !result.singular_values.is_empty() {
        let values = &result.singular_values;
        let largest = values[0];
        let pick = |k: usize| values.get(k).map_or(f64::NAN, |v| v / largest);
        let d = result.dim;
        println!(
            "{:>10} d={:<4} rank {} (tol {:.1e}), {} above 1e-6, {} above 1e-3 of the largest; \
             sigma_(d+2)/sigma_1 {:.2e}, sigma_(d+3)/sigma_1 {:.2e}",
            "",
            d,
            rank::rank_above(values, result.rank_tolerance),
            result.rank_tolerance,
            rank::rank_above(values, 1e-6),
            rank::rank_above(values, 1e-3),
            pick(d + 1),
            pick(d + 2),
        );
    }
}

fn print_table(results: &[RunResult]) {
    println!("| d | output | valid ppl | test ppl | train loss | s/window | rank (tol) | rank > 1e-6 | rank > 1e-3 |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for result in results {
        let values = &result.singular_values;
        let rank_at = |tol: f64| {
            if values.is_empty() {
                "-".to_string()
            } else {
                rank::rank_above(values, tol).to_string()
            }
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {} | {} | {} |",
            result.dim,
            result.activation.name(),
            result.valid_ppl,
            result.test_ppl,
            result.train_loss,
            result.seconds_per_batch,
            rank_at(result.rank_tolerance),
            rank_at(1e-6),
            rank_at(1e-3),
        );
    }
}

fn append_json(
    path: &PathBuf,
    args: &Args,
    config: &TrainConfig,
    result: &RunResult,
    device: &Device,
) -> Result<(), String> {
    use std::io::Write;
    let record = serde_json::json!({
        "activation": result.activation.name(),
        "d": result.dim,
        "epochs": args.epochs,
        "windows_per_epoch_trained": config.max_batches.unwrap_or(result.batches_per_epoch).min(result.batches_per_epoch),
        "windows_per_epoch_full": result.batches_per_epoch,
        "batch_size": config.batch_size,
        "bptt": config.bptt,
        "lr": config.learning_rate,
        "seed": args.seed,
        "train_loss_last_epoch": result.train_loss,
        "valid_ppl": result.valid_ppl,
        "valid_ppl_per_epoch": result.valid_ppl_per_epoch,
        "test_ppl": result.test_ppl,
        "seconds_per_window": result.seconds_per_batch,
        "train_seconds": result.train_seconds,
        "device": format!("{device:?}"),
        "threads": rayon::current_num_threads(),
        "rank_contexts": args.rank_contexts,
        "singular_values": result.singular_values,
    });
    let mut file = open_json(path)?;
    writeln!(file, "{record}").map_err(|e| format!("failed to write {}: {e}", path.display()))
}

/// Opens the JSON Lines file for appending, creating it when missing.
fn open_json(path: &PathBuf) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            format!(
                "failed to open {} for appending: {e}; check that its folder exists",
                path.display()
            )
        })
}

/// Trains d=16 with sigsoftmax on 60 windows of 10 x 20 tokens and fails unless the mean loss
/// of the last 10 windows is at least 1 nat below that of the first 10 (ln 10000 = 9.2 at the
/// start).
fn smoke(corpus: &Corpus, device: &Device) -> candle_core::Result<ExitCode> {
    let config = TrainConfig {
        batch_size: 10,
        bptt: 20,
        learning_rate: 3e-3,
        clip_norm: 1.0,
        max_batches: Some(60),
    };
    let start = Instant::now();
    let model = LanguageModel::new(corpus.words.len(), 16, 1, device)?;
    let mut optimizer = model::optimizer(&model, &config)?;
    let batches = Batches::new(&corpus.train, config.batch_size, config.bptt);
    let activation = Activation::Sigsoftmax;
    let stats = model::train_epoch(
        &model,
        &mut optimizer,
        &batches,
        activation,
        &config,
        device,
        10,
    )?;

    let mean = |losses: &[f64]| losses.iter().sum::<f64>() / losses.len() as f64;
    let first = mean(&stats.losses[..10]);
    let last = mean(&stats.losses[stats.losses.len() - 10..]);
    let valid = model::evaluate(&model, &corpus.valid, activation, &config, Some(20), device)?;

    println!(
        "smoke: loss {first:.3} -> {last:.3} over {} windows, valid ppl {:.1} (20 windows), {:.1}s",
        stats.batches,
        valid.exp(),
        start.elapsed().as_secs_f64()
    );
    if last.is_finite() && last < first - 1.0 {
        println!("smoke: passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("smoke: FAILED: the loss did not fall by 1 nat");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(flags: &[&str]) -> Result<(), String> {
        let args = Args::try_parse_from(std::iter::once("ptb").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        check_args(&args)
    }

    #[test]
    fn defaults_pass_checks() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn zero_sizes_are_rejected() {
        for flags in [
            &["--dims", "16,0"][..],
            &["--batch-size", "0"],
            &["--bptt", "0"],
            &["--lr", "0"],
            &["--clip=-1"],
            &["--epochs", "0"],
        ] {
            let error = check(flags).expect_err("a zero or negative setting");
            assert!(error.contains("invalid"), "{flags:?}: {error}");
        }
    }

    #[test]
    fn json_in_missing_folder_fails() {
        let path = std::env::temp_dir().join("sigsoftmax-ptb-missing-folder/runs.jsonl");
        let error = open_json(&path).expect_err("the folder does not exist");
        assert!(error.contains("check that its folder exists"), "{error}");
    }

    #[test]
    fn corpus_bounds_rank_and_streams() {
        let corpus = Corpus {
            words: (0..50).map(|i| i.to_string()).collect(),
            train: vec![0; 1000],
            valid: vec![0; 40],
            test: vec![0; 100],
        };
        let parse = |flags: &[&str]| {
            Args::try_parse_from(std::iter::once("ptb").chain(flags.iter().copied())).unwrap()
        };
        assert!(check_corpus_fits(&parse(&["--rank-contexts", "40"]), &corpus).is_ok());
        let error = check_corpus_fits(&parse(&["--rank-contexts", "41"]), &corpus).unwrap_err();
        assert!(error.contains("at most 40"), "{error}");
        let error = check_corpus_fits(
            &parse(&["--batch-size", "21", "--rank-contexts", "0"]),
            &corpus,
        )
        .unwrap_err();
        assert!(error.contains("valid split"), "{error}");
    }
}
