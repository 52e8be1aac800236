//! A one-layer LSTM word language model whose output layer ends in the fused cross-entropy,
//! with softmax or sigsoftmax as the normalization.

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::rnn::{LSTMConfig, LSTMState, RNN};
use candle_nn::{AdamW, Embedding, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap, LSTM};
use sigsoftmax::{Activation, CrossEntropyOptions, Reduction};

use crate::data::Batches;

/// Embedding (vocab x d), LSTM (d -> d) and a linear output layer (d -> vocab, with bias).
pub struct LanguageModel {
    embedding: Embedding,
    lstm: LSTM,
    output: Linear,
    pub var_map: VarMap,
    pub dim: usize,
}

impl LanguageModel {
    /// Builds the model with weights drawn from `U(-0.1, 0.1)` by a generator seeded with
    /// `seed`, and biases 0, so two models with the same seed start identical (candle's own
    /// CPU generator cannot be seeded).
    pub fn new(vocab: usize, dim: usize, seed: u64, device: &Device) -> Result<Self> {
        let var_map = VarMap::new();
        let builder = VarBuilder::from_varmap(&var_map, DType::F32, device);
        let embedding = candle_nn::embedding(vocab, dim, builder.pp("embedding"))?;
        let lstm = candle_nn::lstm(dim, dim, LSTMConfig::default(), builder.pp("lstm"))?;
        let output = candle_nn::linear(dim, vocab, builder.pp("output"))?;

        let mut named: Vec<(String, Var)> = var_map
            .data()
            .lock()
            .expect("no other thread holds the variable map")
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rng = XorShift::new(seed);
        for (name, var) in named {
            let values: Vec<f32> = if name.contains("bias") {
                vec![0.0; var.elem_count()]
            } else {
                (0..var.elem_count())
                    .map(|_| (0.2 * rng.next_unit() - 0.1) as f32)
                    .collect()
            };
            var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
        }
        Ok(Self {
            embedding,
            lstm,
            output,
            var_map,
            dim,
        })
    }

    pub fn zero_state(&self, batch_size: usize) -> Result<LSTMState> {
        self.lstm.zero_state(batch_size)
    }

    /// Computes the hidden states `[batch, steps, d]` for `inputs` (`[batch, steps]` token ids) from
    /// `state`, and the state after the last step.
    pub fn hidden(&self, inputs: &Tensor, state: &LSTMState) -> Result<(Tensor, LSTMState)> {
        let embedded = self.embedding.forward(inputs)?;
        let states = self.lstm.seq_init(&embedded, state)?;
        let last = states
            .last()
            .expect("a window has at least one step")
            .clone();
        Ok((self.lstm.states_to_tensor(&states)?, last))
    }

    /// Computes the logits `[rows, vocab]` for hidden states `[.., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.output.forward(&hidden.reshape(((), self.dim))?)
    }

    /// Returns the output layer's weight (`vocab x d`) and bias (`vocab`).
    pub fn output_layer(&self) -> (&Tensor, Option<&Tensor>) {
        (self.output.weight(), self.output.bias())
    }
}

/// A 64-bit xorshift generator, for weights that depend on the seed only.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Draws a value in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Settings shared by every run of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub bptt: usize,
    pub learning_rate: f64,
    /// Gradients whose global L2 norm exceeds this are scaled down to it.
    pub clip_norm: f64,
    /// Windows trained per epoch (all when `None`).
    pub max_batches: Option<usize>,
}

/// Measurements of one training epoch.
pub struct EpochStats {
    /// Mean cross-entropy (nats per token) over the windows trained.
    pub mean_loss: f64,
    /// Loss of every window, in order.
    pub losses: Vec<f64>,
    pub batches: usize,
    pub seconds: f64,
}

pub fn optimizer(model: &LanguageModel, config: &TrainConfig) -> Result<AdamW> {
    let params = ParamsAdamW {
        lr: config.learning_rate,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    AdamW::new(model.var_map.all_vars(), params)
}

/// Trains one epoch (or `config.max_batches` windows) with truncated backpropagation
/// through time, printing progress to stderr every `log_every` windows.
pub fn train_epoch(
    model: &LanguageModel,
    optimizer: &mut AdamW,
    batches: &Batches,
    activation: Activation,
    config: &TrainConfig,
    device: &Device,
    log_every: usize,
) -> Result<EpochStats> {
    let options = CrossEntropyOptions::default();
    let count = config
        .max_batches
        .map_or(batches.len(), |max| max.min(batches.len()));
    let start = Instant::now();
    let mut state = model.zero_state(config.batch_size)?;
    let mut losses = Vec::with_capacity(count);
    for index in 0..count {
        let (inputs, targets, steps) = batches.window(index);
        let inputs = Tensor::from_vec(inputs, (config.batch_size, steps), device)?;
        let targets = Tensor::from_vec(targets, config.batch_size * steps, device)?;
        // The state carries over from the previous window, but its gradient stops there.
        let detached = LSTMState::new(state.h.detach(), state.c.detach());
        let (hidden, next) = model.hidden(&inputs, &detached)?;
        state = next;
        let logits = model.logits(&hidden)?;
        let loss = sigsoftmax::candle::cross_entropy(&logits, &targets, activation, &options)?;
        let mut grads = loss.backward()?;
        clip_gradients(&model.var_map.all_vars(), &mut grads, config.clip_norm)?;
        optimizer.step(&grads)?;
        losses.push(f64::from(loss.to_scalar::<f32>()?));
        if log_every > 0 && (index + 1) % log_every == 0 {
            let recent = &losses[losses.len().saturating_sub(log_every)..];
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            eprintln!(
                "  {:>10} d={:<4} window {:>5}/{count}  loss {mean:.3}  ppl {:.1}  {:.1}s",
                activation.name(),
                model.dim,
                index + 1,
                mean.exp(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(EpochStats {
        mean_loss: losses.iter().sum::<f64>() / count as f64,
        losses,
        batches: count,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Scales every gradient by `clip_norm / norm` when their global L2 norm exceeds `clip_norm`.
fn clip_gradients(
    vars: &[Var],
    grads: &mut candle_core::backprop::GradStore,
    clip_norm: f64,
) -> Result<()> {
    let mut squared = 0.0f64;
    for var in vars {
        if let Some(grad) = grads.get(var) {
            squared += f64::from(grad.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = squared.sqrt();
    if norm > clip_norm {
        let scale = clip_norm / norm;
        for var in vars {
            if let Some(grad) = grads.remove(var) {
                grads.insert(var, (grad * scale)?);
            }
        }
    }
    Ok(())
}

/// Computes the mean cross-entropy in nats per token over a whole split (at most `max_batches` windows).
pub fn evaluate(
    model: &LanguageModel,
    tokens: &[u32],
    activation: Activation,
    config: &TrainConfig,
    max_batches: Option<usize>,
    device: &Device,
) -> Result<f64> {
    let options = CrossEntropyOptions {
        reduction: Reduction::Sum,
        ..CrossEntropyOptions::default()
    };
    let batches = Batches::new(tokens, config.batch_size, config.bptt);
    let count = max_batches.map_or(batches.len(), |max| max.min(batches.len()));
    let mut state = model.zero_state(config.batch_size)?;
    let (mut total, mut scored) = (0.0f64, 0usize);
    for index in 0..count {
        let (inputs, targets, steps) = batches.window(index);
        let inputs = Tensor::from_vec(inputs, (config.batch_size, steps), device)?;
        let targets = Tensor::from_vec(targets, config.batch_size * steps, device)?;
        let (hidden, next) = model.hidden(&inputs, &state)?;
        state = next;
        let logits = model.logits(&hidden)?;
        let loss = sigsoftmax::candle::cross_entropy(&logits, &targets, activation, &options)?;
        total += f64::from(loss.to_scalar::<f32>()?);
        scored += config.batch_size * steps;
    }
    Ok(total / scored as f64)
}

/// Computes the hidden states `[contexts, d]` after each of the first `contexts` tokens of `tokens`, read
/// as one stream from the zero state.
pub fn context_states(
    model: &LanguageModel,
    tokens: &[u32],
    contexts: usize,
    device: &Device,
) -> Result<Tensor> {
    let inputs = Tensor::from_vec(tokens[..contexts].to_vec(), (1, contexts), device)?;
    let (hidden, _) = model.hidden(&inputs, &model.zero_state(1)?)?;
    hidden.reshape((contexts, model.dim))
}
