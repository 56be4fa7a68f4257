//! `tttc generate`: a language model program prefilled with a prompt, then decoded token by
//! token through one streaming session, printing tokens as they come.

use super::progress::Progress;
use super::run::{default_backend, BackendArg};
use super::{
    compile, read_model_weights, CacheArgs, Failure, ModelArgs, PrecisionArg, SettingArgs,
};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tttc::runtime::Tensor;
use tttc::stream::{Class, Session};
use tttc::Precision;

/// Arguments of `tttc generate`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt language model program (e.g. examples/ttt_lm.ttt): one per-token input of
    /// token ids `[1, L]` and a per-token output of logits `[1, L, vocab]`.
    file: PathBuf,
    /// Safetensors file with the model's weights under the program's input names (or give
    /// --model).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    weights: Option<PathBuf>,
    /// The prompt as token ids, comma-separated (e.g. 1,2,3).
    #[arg(
        long,
        value_name = "ID,ID,...",
        value_delimiter = ',',
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    prompt_ids: Option<Vec<u64>>,
    /// The prompt as text, encoded with --tokenizer (or the model folder's tokenizer.json);
    /// without a tokenizer byte-level: every UTF-8 byte is a token id (for models with a
    /// vocabulary of 256 byte tokens). The output is printed as text too.
    #[arg(long)]
    prompt: Option<String>,
    /// A Hugging Face tokenizer.json: encodes --prompt and decodes the generated tokens
    /// (default: DIR/tokenizer.json with --model DIR, when there is one).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// How many tokens to generate after the prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampler (with a temperature above 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The program output holding the logits (default: `logits`, else its only per-token
    /// output).
    #[arg(long, value_name = "NAME")]
    output: Option<String>,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Precision of the computation.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    #[command(flatten)]
    settings: SettingArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Runs `tttc generate`.
pub fn main(args: &Args) -> Result<(), Failure> {
    args.cache.apply()?;
    let result = generate(args);
    if result.is_ok() {
        args.cache.report();
    }
    result
}

fn generate(args: &Args) -> Result<(), Failure> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(Failure::user(format!(
            "--temperature must be 0 or more, got {}",
            args.temperature
        )));
    }
    let precision: Precision = args.precision.into();
    let model = args.model.open()?;
    let tokenizer_file = args
        .tokenizer
        .clone()
        .or_else(|| model.as_ref().and_then(|m| m.tokenizer.clone()));
    let tokenizer = tokenizer_file
        .as_deref()
        .map(super::tokenizer::Tok::open)
        .transpose()?;
    let settings_args = args.settings.with_model(model.as_ref());
    let (compiled, settings) = compile(&args.file, precision, &settings_args, None, false)?;
    let program = compiled.program;
    let plan = tttc::stream::plan::plan(&program)?;
    let (ids_name, ids_axis) = match plan.token_inputs.iter().collect::<Vec<_>>().as_slice() {
        [(name, axis)] => ((*name).clone(), **axis),
        other => {
            return Err(Failure::user(format!(
                "generate needs a program with exactly one per-token input (the token ids); \
                 this one has {}",
                other.len()
            )))
        }
    };
    let logits_name = logits_output(&plan, args.output.as_deref())?;

    let (mut weights, source) = match (&model, &args.weights) {
        (Some(m), _) => (
            read_model_weights(m, &program, precision)?,
            m.dir.display().to_string(),
        ),
        (None, Some(w)) => (
            tttc::read_inputs(&program, w, precision.elem()).map_err(Failure::user)?,
            w.display().to_string(),
        ),
        (None, None) => return Err(Failure::user("give --weights or --model")),
    };
    if weights.remove(&ids_name).is_some() {
        eprintln!("note: {source} also holds `{ids_name}`; the prompt is used instead");
    }
    let text_mode = args.prompt.is_some();
    let prompt: Vec<u64> = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => match &tokenizer {
            Some(t) => t.encode(text)?,
            None => text.bytes().map(u64::from).collect(),
        },
        (None, None) => return Err(Failure::user("give --prompt-ids or --prompt")),
    };
    if prompt.is_empty() {
        return Err(Failure::user("the prompt is empty"));
    }

    let backend: tttc::Backend = args.backend.into();
    let mut session = Session::new(backend, program, weights, settings, precision)?;
    session.set_final_outputs(false);
    let ids_tensor = |ids: &[u64]| -> Result<BTreeMap<String, Tensor>, Failure> {
        let values: Vec<f64> = ids.iter().map(|&i| i as f64).collect();
        let mut shape = vec![1usize; ids_axis + 1];
        shape[ids_axis] = ids.len();
        let t = Tensor::from_f64(shape, values)
            .map_err(Failure::internal)?
            .cast(precision.elem());
        Ok(BTreeMap::from([(ids_name.clone(), t)]))
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let spinner = Progress::spinner("compiling and prefilling");
    let logits = session.feed(&ids_tensor(&prompt)?)?;
    spinner.finish();
    let prefill = start.elapsed();
    let mut printer = Printer::new(text_mode, tokenizer.as_ref());
    let mut next = pick(
        &last_row(&logits, &logits_name)?,
        args.temperature,
        &mut rng,
    )
    .map_err(|why| bad_logits(&logits_name, "at decode step 0 (after the prompt)", &why))?;
    // The first one-token step also compiles the one-token pieces: timed on its own.
    let mut first_step = None;
    let mut decode = 0.0;
    for i in 0..args.max_new_tokens {
        printer.print(&mut out, next)?;
        if i + 1 == args.max_new_tokens {
            break;
        }
        let step = Instant::now();
        let logits = session.feed(&ids_tensor(&[next])?)?;
        next = pick(
            &last_row(&logits, &logits_name)?,
            args.temperature,
            &mut rng,
        )
        .map_err(|why| bad_logits(&logits_name, &format!("at decode step {}", i + 1), &why))?;
        let took = step.elapsed().as_secs_f64();
        match first_step {
            None => first_step = Some(took),
            Some(_) => decode += took,
        }
    }
    writeln!(out).map_err(Failure::internal)?;
    let steps = args.max_new_tokens.saturating_sub(2);
    let rate = if decode > 0.0 {
        format!("{:.1} tokens/s", steps as f64 / decode)
    } else {
        "too few tokens to time".into()
    };
    eprintln!(
        "prefill: {} token(s) in {:.1} ms (compiling included); first decode step {:.1} ms \
         (compiling the one-token pieces); then {steps} token(s) in {:.1} ms: {rate}",
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        first_step.unwrap_or(0.0) * 1e3,
        decode * 1e3,
    );
    Ok(())
}

/// The output holding the logits: `name` if given, else `logits`, else the only per-token
/// output.
fn logits_output(plan: &tttc::stream::StreamPlan, name: Option<&str>) -> Result<String, Failure> {
    let per_token: Vec<&str> = plan
        .outputs
        .iter()
        .filter(|o| matches!(o.class, Class::Token(_)))
        .map(|o| o.name.as_str())
        .collect();
    let chosen = match name {
        Some(n) => per_token.iter().find(|&&o| o == n).copied(),
        None => per_token
            .iter()
            .find(|&&o| o == "logits")
            .or_else(|| (per_token.len() == 1).then(|| &per_token[0]))
            .copied(),
    };
    chosen.map(str::to_string).ok_or_else(|| {
        Failure::user(format!(
            "cannot tell which output holds the logits; give --output (per-token outputs: {})",
            per_token.join(", ")
        ))
    })
}

/// The logits of the last token: the last row of `[1, L, vocab]`.
fn last_row(outputs: &BTreeMap<String, Tensor>, name: &str) -> Result<Vec<f64>, Failure> {
    let t = outputs
        .get(name)
        .ok_or_else(|| Failure::internal(format!("no output `{name}`")))?;
    let vocab = *t
        .shape()
        .last()
        .ok_or_else(|| Failure::user(format!("output `{name}` is a scalar, not logits")))?;
    let values = t.to_f64_vec();
    Ok(values[values.len().saturating_sub(vocab)..].to_vec())
}

/// The user error for logits no token can be picked from: `when` says which step (the
/// prompt's, or decode step N), `why` what is wrong with them.
fn bad_logits(name: &str, when: &str, why: &str) -> Failure {
    Failure::user(format!(
        "cannot pick the next token {when}: the logits (output `{name}`) {why}"
    ))
}

/// The next token: the most likely one at temperature 0 (the lowest id on ties), else a sample
/// of softmax(logits / temperature). An error (saying why) when there is no token to pick
/// (an empty row), when a logit is NaN or +infinity (the model computed garbage: picking
/// token 0 forever would hide it), or when every logit is -infinity.
fn pick(logits: &[f64], temperature: f64, rng: &mut rand::rngs::StdRng) -> Result<u64, String> {
    if logits.is_empty() {
        return Err("are empty (a vocabulary of 0 tokens)".into());
    }
    if let Some(i) = logits
        .iter()
        .position(|x| x.is_nan() || *x == f64::INFINITY)
    {
        return Err(format!("hold {} at token id {i}", logits[i]));
    }
    let best = logits
        .iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    let top = logits[best];
    if top == f64::NEG_INFINITY {
        return Err("are all -inf".into());
    }
    if temperature == 0.0 {
        return Ok(best as u64);
    }
    let weights: Vec<f64> = logits
        .iter()
        .map(|&x| ((x - top) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return Ok(i as u64);
        }
        r -= w;
    }
    Ok(best as u64)
}

/// Prints generated tokens as they come: decoded text with a tokenizer (each time the text of
/// all tokens so far grows, its new end), bytes in text mode without one, else ids.
struct Printer<'a> {
    text: bool,
    tokenizer: Option<&'a super::tokenizer::Tok>,
    ids: Vec<u64>,
    printed: String,
}

impl<'a> Printer<'a> {
    fn new(text: bool, tokenizer: Option<&'a super::tokenizer::Tok>) -> Self {
        Printer {
            text,
            tokenizer,
            ids: Vec::new(),
            printed: String::new(),
        }
    }

    fn print(&mut self, out: &mut impl Write, id: u64) -> Result<(), Failure> {
        let first = self.ids.is_empty();
        self.ids.push(id);
        match (self.text, self.tokenizer) {
            (true, Some(t)) => {
                let text = t.decode(&self.ids)?;
                // A token may change how earlier ones decode (byte pieces completing a
                // character): print only once the printed text is a prefix.
                if let Some(new) = text.strip_prefix(self.printed.as_str()) {
                    write!(out, "{new}").map_err(Failure::internal)?;
                    self.printed = text;
                }
            }
            (true, None) => match u8::try_from(id) {
                Ok(b) => out.write_all(&[b]).map_err(Failure::internal)?,
                Err(_) => write!(out, "<{id}>").map_err(Failure::internal)?,
            },
            (false, _) => {
                if !first {
                    write!(out, " ").map_err(Failure::internal)?;
                }
                write!(out, "{id}").map_err(Failure::internal)?;
            }
        }
        out.flush().map_err(Failure::internal)
    }
}
