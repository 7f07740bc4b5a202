//! # mezo
//!
//! Forward-only fine-tuning of language models (MeZO: zeroth-order SGD, with the memory of
//! inference) and empirical neural tangent kernels (eNTK) of prompt-based fine-tuning, in one
//! binary that runs as one process on a laptop or as N MPI ranks on a GPU cluster.
//!
//! ## Architecture (what exists today)
//!
//! ```text
//! cli      clap definitions and the flag -> config translation; the only module that knows flags
//! data     LM-BFF-compatible tasks: registry, byte-identical k-shot splits, prompt encoding,
//!          demonstrations, batching; `data::large`: MeZO's large-model tasks (Hugging Face JSON
//!          lines or Parquet, numpy-exact sampling, the reference's templates and prompts)
//! model    RoBERTa/BERT prompt models, OPT and Llama-family causal LMs on tch; HF checkpoints
//!          in and out; parameters in HF order, freezing rules, LoRA and prefix adapters
//! optim    zeroth-order SGD (MeZO): the reference's random stream, and the fast counter-based
//!          stream (Philox, perturbed weights formed just in time, NVRTC kernels on GPUs); `Mezo`,
//!          the optimiser object that owns a stream, its update rule and its pending rows
//! train    the training loop between two objects, the optimiser and the run (trajectory,
//!          metrics, best-dev weights); run directories owned by one configuration and one writer;
//!          checksummed trajectories that resume and replay; any task family through
//!          `train::TrainTask` (LM-BFF's data, or `train::large`: the large-model losses)
//! eval     task metrics of a model on dev/test, features sharded over ranks; `eval::large`:
//!          candidate scoring (shared prompt prefixes in a KV cache, `eval::options`) and greedy
//!          generation for the large-model tasks
//! kernel   eNTK kernels: per-example gradients computed once per row block, a batch of examples
//!          per forward/backward pass (vocabulary rows kept sparse), f64 products, row blocks
//!          over ranks into one HDF5 file, resumable and computable in parts
//! solve    kernel solvers (lstsq, logistic with CV, SVR/SVC, asym) on a kernel HDF5 file, as
//!          LM-Kernel-FT computes them; grid points or CV folds spread over ranks
//! linearhead
//!          linear probes on the output layer's input (LM-Kernel-FT; MeZO's LP on causal LMs),
//!          written into the head
//! report   results over seeds (best dev per seed, test mean and std): `mezo gather`
//! plot     learning curves of runs as SVG: `mezo plot`
//! scaling  scaling studies: measurements of train steps and kernel row blocks at several rank
//!          counts, and the cost model that projects them (`mezo scaling`)
//! sweep    a command line over a grid of flag values: points, their directories and finished
//!          marks (`mezo sweep` runs them here or as Slurm job arrays)
//! metrics  accuracy, F1, MCC, Pearson, Spearman as LM-BFF computes them; SQuAD's answer F1
//! dist     the communicator (one process, or MPI ranks under mpirun/srun), rank -> device and
//!          thread placement, NCCL bootstrapped over MPI
//! h5       one HDF5 file shared by all ranks: collective row-block writes, atomic completion
//! fsio     result files written under a `.partial` name, synced, then renamed; run-directory locks
//! fingerprint
//!          content fingerprints tying trajectories and kernel files to their weights and data
//! cuda     CUDA through cudarc with dynamic loading: probing, NVRTC kernels; never panics
//!          on a machine without a driver
//! info     what the installation is made of, read from the loaded libraries
//! check    end-to-end checks of collectives, collective HDF5 and GPUs on an allocation
//! logging  `log` + env_logger with the rank in each line
//! error    the input-error / failure distinction behind exit codes 2 and 1
//! ```
//!
//! A [`dist::Dist`] is created once per process and passed down; no module reaches for a global
//! communicator. The reference behaviours the code reproduces are described in `docs/reference.md`.

pub mod check;
pub mod cli;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod fingerprint;
pub mod fsio;
pub mod h5;
pub mod info;
pub mod kernel;
pub mod linearhead;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod report;
pub mod scaling;
pub mod solve;
pub mod sweep;
pub mod train;
