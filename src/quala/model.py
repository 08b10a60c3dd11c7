"""The length-adaptive question-answering model: any BERT/RoBERTa-family encoder with Drop-and-Restore.

Drop-and-Restore (Kim & Cho 2021, LAT §3.2 and §4.1): layer ``i`` runs self-attention on the tokens still
alive, scores each token by the attention probability it *receives* (summed over heads and alive queries) or,
with ``significance: learned``, by a learned linear scorer on the attention output (docs/training.md),
keeps the top ``n_i`` tokens per row for its feed-forward network, and drops the rest. A full-length buffer,
initialised with the embedding output, receives every surviving token's newest state after each layer, so a
token dropped at layer ``i`` reaches the span head with its layer ``i-1`` state. Padding receives no attention
and is dropped first. The Hugging Face model is wrapped, not forked: this module re-runs its encoder loop with
the layer's own sub-modules (``attention.self.query`` ... ``output.LayerNorm``), so every BERT- or RoBERTa-style
checkpoint loads unchanged and saves back as a plain ``...ForQuestionAnswering`` checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from quala.config import LengthAdaptiveConfig
from quala.errors import QualaError
from quala.graph_ops import attention, exporting, put_rows, reshape
from quala.lengths import validate_length_config
from quala.model_dir import CONFIG_KEY, ModelDir, la_config_of, store_la_config

LengthConfig = Sequence[int] | torch.Tensor | None


@dataclass
class LengthAdaptiveQAOutput:
    """Span logits on the restored full-length sequence, plus optional per-layer internals."""

    start_logits: torch.Tensor  # (B, L)
    end_logits: torch.Tensor  # (B, L)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # N+1 restored buffers, each (B, L, D)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, n_{i-1}, n_{i-1}) on alive tokens
    alive: tuple[torch.Tensor, ...] | None = None  # per layer (B, L) bool: original positions through its FFN
    # learned significance (``output_token_scores``): per computed layer, the scorer's logits on the tokens that
    # entered it, their original positions and which of them are alive; each (B, n_i)
    token_scores: tuple[torch.Tensor, ...] | None = None
    token_positions: tuple[torch.Tensor, ...] | None = None
    token_masks: tuple[torch.Tensor, ...] | None = None


class TokenScorer(nn.Module):
    """One linear token scorer per layer, ``s_i = h · w_i + b_i`` on the layer's attention output: the learned
    significance of :class:`~quala.config.LengthAdaptiveConfig`. With ``question`` the weight vector depends on
    the question, ``w_i + U_i q̄`` (``U`` starts at zero: a fresh question scorer ranks as the linear one). Its
    parameters are stored inside the Hugging Face checkpoint under ``quala_scorer.`` so that every copy,
    conversion and export of the weights keeps it."""

    PREFIX = "quala_scorer."

    def __init__(self, num_layers: int, hidden_size: int, question: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_layers, hidden_size) * 0.02)  # (N, D)
        self.bias = nn.Parameter(torch.zeros(num_layers))  # (N,)
        self.question = nn.Parameter(torch.zeros(num_layers, hidden_size, hidden_size)) if question else None

    def forward(self, h: torch.Tensor, layer: int, question: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` (B, n, D); ``question`` (B, n) bool, the alive question tokens (question scorers only)."""
        scores = torch.matmul(h, self.weight[layer]) + self.bias[layer]  # (B, n)
        if self.question is None:
            return scores
        q = reshape(question.to(h.dtype), (0, 1, -1))  # (B, 1, n)
        mean = torch.matmul(q, h) / q.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1, D)
        w = torch.matmul(mean, self.question[layer])  # (B, 1, D)
        return scores + reshape(torch.matmul(h, w.transpose(1, 2)), (0, -1))  # (B, n)


# -------------------------------------------------------------------------------------- length configs
def keep_counts(n_i: int | torch.Tensor, real: torch.Tensor, alive: torch.Tensor, rule: str, ref: int) -> torch.Tensor:
    """Tokens each row keeps at a layer configured for ``n_i`` (see :class:`LengthAdaptiveConfig`)."""
    if rule == "ratio":
        keep = (real * n_i + ref - 1) // ref  # ceil(n_i * r / ref)
    else:
        keep = torch.clamp(real, max=n_i) if isinstance(n_i, int) else torch.minimum(real, n_i)
    return torch.minimum(keep.clamp(min=1), alive)


# ----------------------------------------------------------------------------------------------- model
class LengthAdaptiveQA(nn.Module):
    """Wraps a Hugging Face ``...ForQuestionAnswering`` model and runs its encoder with Drop-and-Restore."""

    def __init__(self, qa_model: nn.Module, la_config: LengthAdaptiveConfig | None = None):
        super().__init__()
        self.hf = qa_model
        self.la_config = la_config or LengthAdaptiveConfig()
        base = qa_model.base_model
        try:
            self.embeddings = base.embeddings
            self.layers = base.encoder.layer
            self.qa_outputs = qa_model.qa_outputs
            for layer in self.layers:
                layer.attention.self.query, layer.attention.output, layer.intermediate, layer.output  # noqa: B018
        except AttributeError:
            raise QualaError(
                f"unsupported architecture {type(qa_model).__name__}: QuaLA supports BERT- and RoBERTa-family "
                "encoders (BERT, MiniLM, RoBERTa, ...)"
            ) from None
        self.scorer: TokenScorer | None = None
        if self.la_config.significance == "learned":
            old = getattr(qa_model, "quala_scorer", None)
            wanted = self.la_config.scorer_question
            if not isinstance(old, TokenScorer) or (old.question is not None) != wanted:
                # a submodule of the HF model, so its save_pretrained writes the scorer into model.safetensors
                qa_model.quala_scorer = TokenScorer(len(self.layers), qa_model.config.hidden_size, wanted)
                if isinstance(old, TokenScorer):  # a linear scorer warm-starts a question scorer (and back)
                    qa_model.quala_scorer.load_state_dict(old.state_dict(), strict=False)
            self.scorer = qa_model.quala_scorer

    @property
    def config(self):
        return self.hf.config

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, model: str | Path | ModelDir, la_config: LengthAdaptiveConfig | None = None, seed: int = 0
    ) -> LengthAdaptiveQA:
        """Load a QuaLA, plain Hugging Face QA, or encoder-only checkpoint (safetensors only).

        An encoder-only checkpoint gets a freshly initialised span head, seeded with ``seed``.
        """
        from transformers import AutoModelForQuestionAnswering
        from transformers.utils import logging as hf_logging

        model = ModelDir.resolve(model)
        path = model.path
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                # fp32 whatever the checkpoint stores: the built-in model ships fp16 weights, CPUs compute in fp32
                hf = AutoModelForQuestionAnswering.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise QualaError(f"could not load model {model.name!r}: {str(exc).splitlines()[0]}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        hf.eval()
        stored = la_config_of(hf.config, where=f"{path}/config.json:{CONFIG_KEY}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            qa = cls(hf, la_config or stored)
        if qa.scorer is not None:
            _load_scorer(qa.scorer, Path(path), required=stored.significance == "learned")
        return qa

    def with_significance(self, significance: str, seed: int = 0, scorer_question: bool = False) -> LengthAdaptiveQA:
        """The same weights with another token significance; switching to ``"learned"`` adds a fresh scorer
        (seeded) unless the model has one, switching away removes it. ``scorer_question`` turns a linear scorer
        into a question scorer that starts from its weights (and back)."""
        la_config = dataclasses.replace(self.la_config, significance=significance, scorer_question=scorer_question)
        if significance != "learned" and hasattr(self.hf, "quala_scorer"):
            del self.hf.quala_scorer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return type(self)(self.hf, la_config)

    def save_pretrained(self, directory: str | Path) -> None:
        """Save as a plain HF QA checkpoint (safetensors) with the length-adaptive settings in config.json."""
        from quala.io import set_umask_mode

        store_la_config(self.hf.config, self.la_config)
        self.hf.save_pretrained(directory, safe_serialization=True)
        for weights in Path(directory).glob("*.safetensors"):
            set_umask_mode(weights)

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        length_config: LengthConfig = None,
        skip_layers: Sequence[int] = (),
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_token_scores: bool = False,
    ) -> LengthAdaptiveQAOutput:
        """Span logits with Drop-and-Restore.

        ``length_config``: ``None`` (full length), a validated list of per-layer counts (0: this and later layers
        skipped, see :func:`depth_config`), or an int64 tensor of shape ``(N,)`` (graph input for ONNX export:
        every layer then computes significance; counts must be >= 1).
        ``skip_layers``: layers to skip (LayerDrop, Fan et al. 2020); a skipped layer keeps the previous length.
        ``output_token_scores``: the learned scorer's logits at every computed layer (for its training loss).
        """
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if length_config is not None and not isinstance(length_config, torch.Tensor):
            validate_length_config(length_config, self.num_layers)
        learned = self.scorer is not None
        if output_token_scores and not learned:
            raise QualaError("output_token_scores needs a model with significance 'learned'")
        question_mask = None  # (B, L) the question segment, for a question scorer
        if learned and self.scorer.question is not None:
            if token_type_ids is None:
                raise QualaError("a question scorer (scorer_question) needs token_type_ids: BERT-family models")
            question_mask = attention_mask.bool() & (token_type_ids == 0)
        h = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, L, D)
        kept = _Kept.of(attention_mask.bool(), h)
        rule, ref = self.la_config.length_rule, self.la_config.reference_length
        prev = ref
        # a tensor config (the exported graph's input): every layer's wanted count at once, (B, N)
        wanted = (
            keep_counts(length_config, kept.real[:, None], kept.real[:, None], rule, ref)
            if isinstance(length_config, torch.Tensor)
            else None
        )
        hiddens = [h] if output_hidden_states else None
        attns = [] if output_attentions else None
        alive_out = [] if output_hidden_states else None
        scores_out: tuple[list, list, list] | None = ([], [], []) if output_token_scores else None
        for i, layer in enumerate(self.layers):
            if i in skip_layers:
                if hiddens is not None:
                    hiddens.append(hiddens[-1])
                    alive_out.append(alive_out[-1] if alive_out else kept.mask)
                continue
            n_i, drop = _target_length(length_config, i, prev)
            if n_i is not None:
                prev = n_i
                if n_i == 0:  # a depth configuration: this layer and every later one are skipped
                    break
            attn_out, probs = self._attention(
                layer, h, kept.mask, need_probs=(drop and not learned) or output_attentions
            )
            if attns is not None:
                attns.append(probs)
            scores = None  # (B, n)
            if learned and (drop or scores_out is not None):
                question = None if question_mask is None else question_mask.gather(1, kept.slots()) & kept.mask
                scores = self.scorer(attn_out, i, question)
            if scores_out is not None:
                for store, value in zip(scores_out, (scores, kept.slots(), kept.mask)):
                    store.append(value)
            if drop:
                want = wanted[:, i] if wanted is not None else keep_counts(n_i, kept.real, kept.real, rule, ref)
                attn_out = kept.drop(attn_out, h, want, _significance(scores, probs, kept.mask))
            h = layer.output(layer.intermediate(attn_out), attn_out)  # FFN on kept tokens only
            kept.restore(h)
            if hiddens is not None:
                hiddens.append(kept.restored(h))
                alive_out.append(_alive_positions(kept.slots(), kept.mask, B, L))
        if hiddens is not None:  # skipped layers (a depth configuration) pass their input through
            hiddens += [hiddens[-1]] * (self.num_layers + 1 - len(hiddens))
            alive_out += [alive_out[-1] if alive_out else kept.mask] * (self.num_layers - len(alive_out))
        logits = self.qa_outputs(kept.restored(h))  # (B, L, 2)
        start_logits, end_logits = logits.unbind(dim=-1)
        return LengthAdaptiveQAOutput(
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            hidden_states=tuple(hiddens) if hiddens is not None else None,
            attentions=tuple(attns) if attns is not None else None,
            alive=tuple(alive_out) if alive_out is not None else None,
            token_scores=tuple(scores_out[0]) if scores_out is not None else None,
            token_positions=tuple(scores_out[1]) if scores_out is not None else None,
            token_masks=tuple(scores_out[2]) if scores_out is not None else None,
        )

    def _attention(
        self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor, need_probs: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention + output projection/residual/LayerNorm of one layer, with probabilities if needed."""
        attn = layer.attention.self
        H, dh = attn.num_attention_heads, attn.attention_head_size
        proj = (attn.query, attn.key, attn.value)
        if exporting() and all(m.bias is not None for m in proj):
            weight, qkv_bias = torch.cat([m.weight for m in proj]), torch.cat([m.bias for m in proj])  # (3D, D)
            if not need_probs:  # learned significance: one fused Attention node (QAttention once quantized)
                ctx = attention(h, weight.t(), qkv_bias, mask.to(torch.int32), H, attn.scaling)  # (B, n, D)
                return layer.attention.output(ctx, h), None
            # one (D, 3D) product instead of three; per-channel int8 weights keep every output column's scale, so
            # the int8 logits are those of the separate products (docs/inference.md, "Packed Q/K/V")
            packed = F.linear(h, weight, qkv_bias)  # (B, n, 3D)
            q, k, v = (reshape(x, (0, -1, H, dh)).transpose(1, 2) for x in packed.split(H * dh, dim=-1))
        else:
            q, k, v = (reshape(m(h), (0, -1, H, dh)).transpose(1, 2) for m in proj)
        bias = torch.where(reshape(mask, (0, 1, 1, -1)), 0.0, torch.finfo(h.dtype).min).to(h.dtype)  # (B, 1, 1, n)
        p_drop = attn.dropout.p if self.training else 0.0
        probs = None
        if need_probs:
            scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling + bias  # (B, H, n, n)
            probs = F.softmax(scores, dim=-1)
            ctx = torch.matmul(F.dropout(probs, p_drop, self.training), v)  # (B, H, n, dh)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop, scale=attn.scaling)
        ctx = reshape(ctx.transpose(1, 2), (0, 0, -1))  # (B, n, D)
        return layer.attention.output(ctx, h), probs


def _target_length(length_config: LengthConfig, i: int, prev: int) -> tuple[int | None, bool]:
    """Layer ``i``'s token count and whether it drops tokens. A tensor config always runs the drop step; its
    counts (``None`` here) come from the forward's table of every layer's wanted counts."""
    if length_config is None:
        return None, False
    if isinstance(length_config, torch.Tensor):
        return None, True
    n_i = int(length_config[i])
    return n_i, n_i < prev


@dataclass
class _Kept:
    """Drop-and-Restore bookkeeping (LAT §3.2): which original positions the gathered sequence holds, which of
    its slots are alive, and the full-length restore buffer (None until the first drop).

    The buffer is flat, (B·L + 1, D): row ``b·L + j`` holds position ``j`` of input row ``b``, and the last row is a
    sink for masked slots, so every restore is one row scatter with no reshape of the dynamic axes."""

    mask: torch.Tensor  # (B, n) alive slots
    real: torch.Tensor  # (B,) real tokens of each input row
    alive: torch.Tensor  # (B,) alive slots now
    template: torch.Tensor  # (B, L, D) the embeddings output: what the restored sequence looks like
    rows: torch.Tensor  # (B, 1) each input row's index
    width: int | torch.Tensor = 0  # k, the slots of each row (set by each drop)
    positions: torch.Tensor | None = None  # (B, n) original index of each slot; None: nothing dropped yet
    buffer: torch.Tensor | None = None  # (B*L + 1, D)
    offsets: torch.Tensor | None = None  # (B, 1) each input row's first buffer row, b*L
    sink: int | torch.Tensor = 0  # B*L, the buffer's sink row

    @classmethod
    def of(cls, mask: torch.Tensor, h: torch.Tensor) -> _Kept:
        real = mask.sum(-1)
        return cls(mask, real, real, h, torch.arange(h.shape[0], device=h.device)[:, None])

    def slots(self) -> torch.Tensor:
        """Original position of each slot (B, n)."""
        if self.positions is not None:
            return self.positions
        B, L = self.mask.shape
        return torch.arange(L, device=self.mask.device).expand(B, L)

    def drop(self, attn_out: torch.Tensor, h: torch.Tensor, want: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """Keep each row's ``want`` (B,) most significant tokens (at most its alive ones); ``h`` (the states before
        this layer) seeds the buffer."""
        keep = torch.minimum(want, self.alive)  # (B,)
        k = keep.max() if torch.jit.is_tracing() or exporting() else int(keep.max())
        idx = sig.topk(k, dim=-1).indices  # (B, k), most significant first
        self.positions = idx if self.positions is None else self.positions.gather(1, idx)
        self.mask = torch.arange(k, device=h.device)[None, :] < keep[:, None]  # the first keep[b] slots are alive
        self.alive = keep
        D = int(h.shape[-1])
        if self.buffer is None:  # the first drop: slot j is position j
            B, L, _ = h.shape
            self.buffer = torch.cat([reshape(h, (-1, D)), h.new_zeros(1, D)])
            self.offsets, self.sink = self.rows * L, B * L
            starts = self.offsets
        else:
            starts = self.rows * self.width
        self.width = k
        # whole rows of the flat (B*n, D) view: one row Gather when exported (x.gather(1, ...) would export to an
        # element-wise GatherElements over a (B, k, D) index tensor)
        taken = F.embedding(idx + starts, reshape(attn_out, (-1, D)))  # (B, k, D)
        # an identity Reshape (free in ONNX Runtime): the transformer optimizer (export's fuse=True) takes a Gather
        # that feeds a residual Add for an embedding lookup and would leave that Add + LayerNorm unfused
        return reshape(taken, (0, -1, D))

    def restore(self, h: torch.Tensor) -> None:
        """Write the alive tokens' new states into the buffer (masked slots go to the sink)."""
        if self.buffer is not None:
            targets = torch.where(self.mask, self.positions + self.offsets, self.sink)  # (B, k) buffer rows
            self.buffer = put_rows(self.buffer, targets, h)

    def restored(self, h: torch.Tensor) -> torch.Tensor:
        """The full-length sequence: ``h`` itself while nothing was dropped."""
        return h if self.buffer is None else self.buffer[:-1].view_as(self.template)  # (B, L, D)


def _alive_positions(positions: torch.Tensor, mask: torch.Tensor, B: int, L: int) -> torch.Tensor:
    alive = torch.zeros(B, L + 1, dtype=torch.bool, device=positions.device)
    sink = torch.where(mask, positions, torch.full_like(positions, L))
    return alive.scatter(1, sink, True)[:, :L]


def _significance(scores: torch.Tensor | None, probs: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Rank of each slot for top-k (B, n); padding and dropped slots go first. The learned scorer's logits when
    given, else the attention each token receives, summed over heads and alive queries (LAT §3.2), as one GEMV
    over (head, query) rows, faster in ONNX Runtime than Mul + ReduceSum (docs/inference.md)."""
    if scores is not None:
        return torch.where(mask, scores.detach(), torch.finfo(scores.dtype).min)
    H = int(probs.shape[1])  # a constant in the exported graph
    weights = mask.to(probs.dtype).repeat(1, H).unsqueeze(1)  # (B, 1, H*n): alive queries, per head
    sig = torch.matmul(weights, reshape(probs, (0, -1, 0))).squeeze(1)  # (B, H*n, n) rows: (B, n)
    return torch.where(mask, sig, -1.0)


def _load_scorer(scorer: TokenScorer, path: Path, required: bool) -> None:
    """Copy the ``quala_scorer.*`` tensors of ``path/model.safetensors`` into ``scorer``. A model converted to
    learned significance for training has none yet (``required`` False): its scorer keeps the seeded init."""
    from safetensors import safe_open

    file = path / "model.safetensors"
    names = {name: TokenScorer.PREFIX + name for name, _ in scorer.named_parameters()}
    tensors = {}
    if file.is_file():
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            tensors = {name: f.get_tensor(key) for name, key in names.items() if key in keys}
    if len(tensors) < len(names):
        if required:
            raise QualaError(f"{path} says significance 'learned' but model.safetensors has no quala_scorer weights")
        return
    for name, param in scorer.named_parameters():
        if tensors[name].shape != param.shape:
            raise QualaError(
                f"{file}: {names[name]} has shape {tuple(tensors[name].shape)}, expected {tuple(param.shape)} "
                "(a scorer saved for another model size or scorer setting)"
            )
    with torch.no_grad():
        for name, param in scorer.named_parameters():
            param.copy_(tensors[name].float())


# ------------------------------------------------------------------------------------------ loading
def load_tokenizer(model: str | Path | ModelDir):
    """The model's tokenizer (fast, right padding)."""
    from transformers import AutoTokenizer

    model = ModelDir.resolve(model)
    path = model.path
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise QualaError(f"could not load a tokenizer for {model.name!r}: {str(exc).splitlines()[0]}") from None
    if not tok.is_fast:
        raise QualaError(f"{model.name}: QuaLA needs a fast tokenizer (offset mappings)")
    tok.padding_side = "right"
    return tok


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Temporarily set PyTorch's intra-op thread count (None: leave it)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
