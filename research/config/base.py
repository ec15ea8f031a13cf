"""`base_config()`: every config key with its default. Experiments override what they change.

A key that is not here is unknown, and validation rejects it. The keys `seed`, `train.num_steps`,
`train.batch_size`, `train.seq_len`, `train.log_every`, `train.eval_every`,
`optimizer.learning_rate`, `mesh.shape` and `data.path` are a public contract.
"""
import ml_collections

from research.sharding.rules import DEFAULT_RULES


def model_defaults() -> ml_collections.ConfigDict:
  """Architecture keys; `research.models.presets` fills them for published models."""
  m = ml_collections.ConfigDict()
  m.arch = "decoder"           # the architecture (research/models/registry.py): decoder
  m.family = "gpt2"            # gpt2 | llama | mistral | qwen2 | gemma: the Hugging Face family the weights
                               # convert to and from (the switches below define the network; export
                               # checks they fit the family, else picks one they fit: research/hf)
  m.vocab_size = 0             # 0: take the tokenizer's vocabulary size (rounded up, see below)
  m.vocab_multiple = 64        # when vocab_size is 0, round the tokenizer's size up to this
  m.max_seq_len = 1024         # context length (size of the learned position table)
  m.num_layers = 12
  m.embed_dim = 768
  m.num_heads = 12
  m.num_kv_heads = 0           # 0: same as num_heads (multi-head); fewer: grouped-query attention
  m.head_dim = 0               # 0: embed_dim // num_heads
  m.mlp_dim = 0                # 0: 4 * embed_dim
  m.mlp_activation = "gelu_tanh"  # gelu_tanh | gelu | relu | swiglu | geglu (gated: silu / gelu_tanh of the gate)
  m.norm = "layernorm"         # layernorm | rmsnorm
  m.norm_eps = 1e-5
  m.use_bias = True            # every bias: q, k, v, o, MLP and LayerNorm
  m.qkv_bias = False           # biases on the q, k, v projections alone (Qwen2); implied by use_bias
  m.norm_scale_offset = 0.0    # norms multiply by (offset + scale); 1.0 with scales starting at 0 (Gemma)
  m.embed_scale = False        # token embeddings times sqrt(embed_dim), in the compute dtype (Gemma)
  m.position = "learned"       # learned | rope
  m.rope_theta = 10000.0
  m.rope_scaling = "none"      # none | llama3: Llama 3.1's frequency scaling, with the four keys below
  m.rope_scaling_factor = 8.0  # llama3: long wavelengths are divided by this
  m.rope_low_freq_factor = 1.0   # llama3: wavelengths above original_max_len / this are scaled fully
  m.rope_high_freq_factor = 4.0  # llama3: wavelengths below original_max_len / this are kept
  m.rope_original_max_len = 8192  # llama3: the context length the model was pretrained at
  m.sliding_window = 0         # > 0: each token attends to at most this many tokens, itself included
                               # (Mistral); 0: the whole causal prefix
  m.tie_embeddings = True
  m.dropout = 0.0              # residual, attention-output and embedding dropout (train only)
  m.attention_impl = "xla"     # xla (everywhere) | cudnn (GPU only)
  m.init_std = 0.02
  m.remat = "none"             # activation checkpointing per block: none | full | dots_saveable |
                               # dots_no_batch_saveable | attn_out_saveable | mlp_out_saveable |
                               # attn_mlp_out_saveable (see research/models/remat.py)
  m.scan_layers = False        # one lax.scan over stacked blocks: compile time independent of depth
                               # (parameters get a leading 'layers' axis; checkpoints differ in layout)
  m.dtype = "float32"          # compute dtype of activations and matmuls: float32 | bfloat16
  m.param_dtype = "float32"    # storage dtype of parameters and optimizer state; bfloat16 loses
                               # updates smaller than its precision (small learning rates, weight decay)
  return m


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_defaults()

  c.task = ml_collections.ConfigDict()
  c.task.name = "lm"             # the objective (research/tasks): lm (next-token prediction) | sft
                                 # (supervised finetuning: the loss on replies to prompts) | classify (a label
                                 # per text: research/tasks/classify.py)

  c.sft = ml_collections.ConfigDict()  # task.name=sft (research/tasks/sft.py)
  c.sft.template = "auto"        # the chat template: auto (the tokenizer's own, from its tokenizer_config.json /
                                 # chat_template.jinja) | chatml | llama3 | plain ("### Instruction:" /
                                 # "### Response:", for tokenizers trained here; research/data/chat_templates.py)
  c.sft.train_on = "response"    # response: the loss on the replies (each ending with EOS) alone | all: every token
  c.sft.system_prompt = ""       # a system message put first in every conversation without one ("": none)
  c.sft.prompt_field = "prompt"  # a one-turn record's prompt (user) ...
  c.sft.response_field = "response"  # ... and its reply (assistant)
  c.sft.messages_field = "messages"  # a conversation: [{"role": system|user|assistant, "content": ...}, ...]

  c.classify = ml_collections.ConfigDict()  # task.name=classify
  c.classify.labels = ()         # the label names in class order; (): the training split's labels, sorted
                                 # (numerically when all are integers). The run saves the labels it used here,
                                 # so its checkpoints map class indices back to names
  c.classify.label_counts = ()   # set by the run: training examples per label (class weights, the baseline)
  c.classify.pooling = "last"    # last (the last text token: a decoder's summary of the whole text) | mean |
                                 # attention (additive attention with a learned query) | cls (first token:
                                 # encoders only)
  c.classify.dropout = 0.1       # dropout on the pooled vector, before the output layer (train only)
  c.classify.class_weights = "none"  # none | balanced (each class weighted n / (classes x n_class) in the
                                 # loss, train and eval alike, for skewed labels)

  c.finetune = ml_collections.ConfigDict()
  # Start from another run's parameters: a workdir (its newest step), a step directory, or a converted
  # Hugging Face directory (scripts/convert_hf.py). Parameters only: the run starts at step 0 with a
  # fresh optimizer and its own checkpoints; the architecture (model.*, except the runtime keys
  # remat, scan_layers, attention_impl, dtype, param_dtype, dropout) and the tokenizer are the
  # checkpoint's. "": train from scratch.
  c.finetune.init_from = ""
  c.finetune.init_new = ()       # regexes of parameter paths the checkpoint may lack (initialised fresh,
                                 # e.g. a new head); any other missing parameter is an error
  c.finetune.freeze = ()         # regexes of parameter paths (e.g. "^embed/", "^blocks/[0-5]/") that get no
                                 # gradient and no optimizer state

  c.lora = ml_collections.ConfigDict()
  # Low-rank adapters (research/models/lora.py): y = x W + (alpha / rank) dropout(x) A B on the Dense
  # kernels lora.targets matches. The base is frozen (no gradient, no optimizer state): the adapters
  # train, with the parameters finetune.init_new names (a task's head). Checkpoints hold only what
  # trains, plus the base's path (finetune.init_from) and fingerprint; export merges, or writes PEFT.
  c.lora.rank = 0                # 0: off
  c.lora.alpha = 16.0            # the update's scale is alpha / rank
  c.lora.dropout = 0.0           # dropout on the adapters' input (train only)
  c.lora.targets = (r"attn/(q|k|v|o)/kernel$", r"mlp/(up|gate|down)/kernel$")  # regexes on kernel paths
                                 # ('blocks/0/attn/q/kernel'; 'blocks/attn/q/kernel' with scan_layers)

  c.data = ml_collections.ConfigDict()
  # Sources: data.mixture if set, else data.tfds_name if set, else the local corpus at data.path.
  c.data.path = ""               # local corpus: a file, a directory (its .txt/.jsonl/.csv) or a glob
  c.data.format = "auto"         # auto (by extension) | text | jsonl | csv (a header row)
  c.data.text_field = "text"     # jsonl/csv: the field that holds the text
  c.data.label_field = "label"   # jsonl/csv, task.name=classify: the field that holds the label (str or int)
  c.data.doc_split = "file"      # text: one document per file | blank_lines (paragraphs/speeches)
  c.data.val_files = ()          # file names / globs (matched on the name) held out for validation
  c.data.val_fraction = 0.1      # when val_files is empty: the last fraction of each file
  c.data.skip_bad_records = False  # skip (and count) undecodable / malformed records instead of stopping
  c.data.tfds_name = ""          # a prepared TFDS dataset (array_record), e.g. lm1b
  c.data.tfds_data_dir = ""      # its data_dir ("" : TFDS's default)
  c.data.tfds_train_split = "train"
  c.data.tfds_eval_split = "validation"
  c.data.tfds_text_feature = "text"
  c.data.mixture = ()            # ((source, weight), ...): source is a local path/glob or "tfds:NAME"
  c.data.packing = "pack"        # pack (whole documents, segment ids, no cross-document attention) | chunk
                                 # (lm: concatenated, cut into rows) | pad (one example per row: sft, classify)
  c.data.shuffle_rows = 1024     # training rows are shuffled in windows of this many rows (per stream) after
                                 # packing/chunking, so a document longer than a row is not read in order
                                 # (memory: about rows x seq_len x 20 bytes per stream); 0 or 1: off
  c.data.streams = 0             # independent streams making up the global batch, spread over processes.
                                 # 0: one per process (a resumed run keeps its checkpoint's number). Fix it
                                 # (a multiple of every process count you use) and batches do not depend
                                 # on the process count, so runs and checkpoints move between them.
  c.data.num_workers = 0         # Grain worker processes (0: read in the training process)
  c.data.read_threads = 2        # threads reading and tokenizing documents in each process
  c.data.tokenizer = "byte"      # byte | sentencepiece | bpe (GPT-2 files) | tiktoken (a .tiktoken file) |
                                 # hf (a Hugging Face tokenizer directory)
  c.data.tokenizer_dir = ""      # hf: tokenizer.json, else vocab.json + merges.txt, else tokenizer.model, with
                                 # tokenizer_config.json (bos/eos/pad, add_bos_token, chat template); local or gs://
  c.data.bpe_vocab_file = ""     # bpe: vocab.json
  c.data.bpe_merges_file = ""    # bpe: merges.txt
  c.data.tiktoken_file = ""      # tiktoken: a .tiktoken ranks file
  c.data.tiktoken_pattern = "cl100k"  # tiktoken: pre-tokenisation regex, gpt2 | cl100k
  c.data.vocab_size = 4096       # sentencepiece: size of the trained vocabulary
  c.data.spm_model_type = "unigram"  # sentencepiece: unigram | bpe | char | word
  c.data.spm_model_file = ""     # sentencepiece: load this .model instead of training one
  c.data.spm_max_documents = 200000  # sentencepiece: train on at most this many documents
  c.data.cache_dir = ""          # built corpora, tokenizers; "": $RESEARCH_CACHE or ~/.cache/research

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 32        # global batch, in sequences
  c.train.seq_len = 256
  c.train.microbatches = 1       # gradient accumulation: the batch is split into this many steps
  c.train.loss_chunks = 0        # >= 1: output head + cross-entropy fused, in this many chunks along
                                 # the sequence (no [B, L, V] logits kept); 0: f32 logits + optax
  c.train.log_every = 10
  c.train.eval_every = 200       # 0: only at the end
  c.train.eval_at_start = False  # also evaluate before the first step (a finetuning run's starting point)
  c.train.eval_batches = 20      # batches of train.batch_size sequences per evaluation (0: whole split)
  # Evaluation tasks (research/evals) run at every evaluation and the final one, on the run's own
  # parameters, logged as eval_<name>_<metric>: entries "[NAME=]KIND:FILE[;key=value...]" with KIND
  # perplexity (FILE .txt/.jsonl/.csv or `validation`: the run's split; logs perplexity, bits_per_byte;
  # option stride, text_field) | mc (multiple choice .jsonl {context, choices, gold} scored as
  # lm-evaluation-harness 0.4 does; logs acc, acc_norm; options num_fewshot, fewshot_data, seed) |
  # classify (task.name=classify: a labelled .jsonl/.csv; logs loss, accuracy, precision, recall, f1;
  # options text_field, label_field). NAME (default KIND) tells two tasks of a kind apart:
  # ("hellaswag=mc:hs.jsonl;num_fewshot=5;fewshot_data=hs_train.jsonl", "perplexity:validation")
  # logs eval_hellaswag_acc, eval_perplexity_bits_per_byte. Sequences are scored up to train.seq_len.
  c.train.eval_tasks = ()
  c.train.early_stopping_patience = 0  # > 0: stop after this many evaluations in a row without improving
                                 # checkpoint.best_metric (by checkpoint.best_mode); the best step is kept
                                 # (checkpoint.keep_best >= 1) and its parameters restored at the end; 0: off
  c.train.early_stopping_min_delta = 0.0  # an improvement must beat the best by more than this
  c.train.nonfinite = "stop"     # on a NaN/Inf loss, gradient or updated parameters: stop | skip (skip
                                 # the update, count it)
  c.train.max_consecutive_skips = 10  # skip: stop the run after this many skipped steps in a row (a run
                                 # that skips every step learns nothing); 0: never stop
  c.train.sample_at_end = 3      # lines sampled from the model when training ends (0: none)
  c.train.sample_tokens = 64
  c.train.sample_temperature = 0.8
  c.train.tensorboard = True
  c.train.progress = True        # a live progress bar on a terminal; else one line per log
  c.train.compilation_cache_dir = ""  # JAX's persistent compilation cache: a rerun or resumed run reads
                                 # its compiled steps from here instead of compiling ("": off)
  c.train.profile_start_step = 0  # capture a JAX profiler trace of steps [start, stop) into
  c.train.profile_stop_step = 0   # DIR/profile (TensorBoard/XProf, Perfetto); stop <= start: off
  c.train.cost_per_device_hour = 0.0  # $ per device-hour for the run's cost estimate (0: no estimate)
  c.train.peak_flops = 0.0      # FLOP/s of all devices together, the MFU denominator; 0: the datasheet
                                 # figure of a known accelerator, else a matmul measured at the start
                                 # (on CPU 10-20 s per process; a figure from an earlier run skips it)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4   # peak learning rate
  c.optimizer.schedule = "warmup_cosine"  # warmup_cosine | warmup_linear | wsd | constant
  c.optimizer.warmup_steps = 100
  c.optimizer.final_learning_rate = 3e-5  # reached at optimizer.decay_steps (ignored by constant)
  c.optimizer.decay_steps = 0        # step at which decay ends; 0: train.num_steps
  c.optimizer.wsd_decay_fraction = 0.2  # wsd: the last fraction of decay_steps spent decaying
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  # Parameters whose path (e.g. "blocks/0/attn/qkv/bias") matches any of these regexes get no
  # weight decay. Default: norms, biases, embeddings (token and position).
  c.optimizer.no_decay = (r"_norm/", r"/bias$", r"^(embed|pos_embed)/")
  c.optimizer.grad_clip_norm = 1.0   # 0: no clipping
  # L2 regularisation is optimizer.weight_decay (decoupled, AdamW). L1: l1 * sum |w| over the parameters
  # matching optimizer.l1_patterns is added to the training loss (its gradient l1 * sign(w)); 0: off.
  c.optimizer.l1 = 0.0
  c.optimizer.l1_patterns = ()       # regexes of (trainable) parameter paths; (): those weight decay applies to

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000    # save every this many steps (0: not by steps)
  c.checkpoint.every_minutes = 0.0   # and/or at most this often by wall-clock (0: not by time)
  c.checkpoint.keep_last = 3         # retention: the newest N ...
  c.checkpoint.keep_every_steps = 0  # ... plus every K-th step (0: none) ...
  c.checkpoint.keep_best = 0         # ... plus the best N by checkpoint.best_metric (0: none)
  c.checkpoint.best_metric = "eval_loss"
  c.checkpoint.best_mode = "min"     # min | max
  c.checkpoint.async_save = True     # write in the background while training goes on
  c.checkpoint.save_at_end = True
  c.checkpoint.verify = True         # checksum every saved array; a restored step that differs (flipped
                                     # bytes) is treated as unreadable and the previous step is used

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)          # (data, fsdp, tensor); one entry may be -1 ("the rest")
  # Granules (TPU slices; else processes) along each axis, joined by the data-centre network; each
  # entry divides mesh.shape's. (2, 1, 1): two slices / nodes, data parallel between them.
  c.mesh.dcn_shape = (1, 1, 1)
  c.mesh.rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
  return c
