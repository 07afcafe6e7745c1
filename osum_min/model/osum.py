"""OSUM: Whisper encoder -> adaptor -> Qwen2 (LoRA), joined the way the original assembles its sequences.

Each item is [prompt, speech bos, speech, speech eos] (and its label, in training) end to end, and a batch
left-pads whole items (sequence.py): one layout for training (`forward`) and decoding (`generate`), whose
position ids and loss are the original's (docs/original.md §7) and whose items do in a batch what they do alone.
"""

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .adaptor import Adaptor, AdaptorConfig
from ..config_check import ConfigError, build_section, check_config
from .encoder import ENCODER_PRESETS, EncoderConfig, WhisperEncoder
from ..files import read_json
from .generate import GenerationConfig, fast_decoding, generate
from .linear import use_input_major_weights
from .precision import choose_precision
from .quantize import Int8Linear, quantize_int8
from .qwen2 import LLM_PRESETS, Qwen2, Qwen2Config
from .sequence import IGNORE_ID, Sequences, left_padded
from ..text.tokenizer import EOD_ID, RANK_FILE_NAME, Tokenizer, check_fits
from ..weights import load_weights, save_weights

# Directories converted before Qwen2Config took our names used Hugging Face's in config.json's "llm"; they still load.
OLD_LLM_NAMES = {
    "hidden_size": "dim",
    "intermediate_size": "ff_dim",
    "num_layers": "layers",
    "num_heads": "heads",
    "num_kv_heads": "kv_heads",
    "rms_norm_eps": "norm_eps",
    "tie_word_embeddings": "tie_embeddings",
    "max_position_embeddings": "max_positions",
}


def check_quantize(quantize: str | None) -> None:
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: the only quantisation is 'int8'")


def _tuples(section: dict) -> dict:
    """A config.json section with its lists as the tuples the configs hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


class TrainingOutput(NamedTuple):
    """What `OSUM.forward` gives training: the loss to minimise and, for per-task logging, each item's share."""

    # () token-level mean cross-entropy over all label tokens of the batch
    loss: torch.Tensor
    item_losses: torch.Tensor  # (B,) each item's summed label-token loss, detached


@dataclass
class OSUMConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    llm: Qwen2Config = field(default_factory=lambda: LLM_PRESETS["qwen2-7b"])
    # the original's speech bos/eos are rows speech_token_num + 0 and + 1
    speech_token_num: int = 4097
    # appended to every label; the original's hard-coded decoding eos
    eod_id: int = EOD_ID
    max_mel_frames: int = 3000  # 30 s: the encoder's positional table ends there
    name: str = "osum"  # what the model answers as (server model id, web page title)

    def __post_init__(self):
        check_config(self, minimum={"speech_token_num": 0, "eod_id": 0})
        for field_name, width, part in (
            ("dim", self.encoder.dim, "encoder.dim"),
            ("llm_dim", self.llm.dim, "llm.dim"),
        ):
            if getattr(self.adaptor, field_name) != width:
                value = getattr(self.adaptor, field_name)
                raise ConfigError(f"adaptor.{field_name}", value, f"not {part} {width}")

    def with_parts(
        self, encoder: EncoderConfig | None = None, llm: Qwen2Config | None = None
    ) -> "OSUMConfig":
        """Another encoder and/or LLM, the adaptor's widths following them (its in = encoder, out = LLM)."""
        encoder, llm = encoder or self.encoder, llm or self.llm
        adaptor = replace(self.adaptor, dim=encoder.dim, llm_dim=llm.dim)
        return replace(self, encoder=encoder, adaptor=adaptor, llm=llm)

    @classmethod
    def from_dict(cls, data: dict) -> "OSUMConfig":
        """The dict `to_dict` writes; an "llm" section with the old field names (OLD_LLM_NAMES) reads the same.
        ConfigError names a bad value by its place in the file (llm.rope_theta)."""
        encoder = build_section("encoder", EncoderConfig, **data["encoder"])
        adaptor = build_section("adaptor", AdaptorConfig, **_tuples(data["adaptor"]))
        llm = {OLD_LLM_NAMES.get(k, k): v for k, v in _tuples(data["llm"]).items()}
        if twice := [
            f"{old}/{new}"
            for old, new in OLD_LLM_NAMES.items()
            if old in data["llm"] and new in data["llm"]
        ]:
            raise ValueError(
                f"the llm section names a field by both its old and its new name ({', '.join(twice)})"
            )
        sections = {
            "encoder": encoder,
            "adaptor": adaptor,
            "llm": build_section("llm", Qwen2Config, **llm),
        }
        return cls(**sections, **{k: v for k, v in data.items() if k not in sections})

    @classmethod
    def from_file(cls, path) -> "OSUMConfig":
        """A config.json as convert.py and save_pretrained write it; one line naming the file when it is not one."""
        data = read_json(path, "config.json")  # a FileError (a ValueError) in one line
        try:
            return cls.from_dict(data)
        except KeyError as err:
            raise ValueError(
                f"{path}: not an osum-min config.json (no {err} field)"
            ) from None
        except ConfigError as err:
            raise ValueError(f"{path}: {err}") from None
        except (TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"{path}: not an osum-min config.json ({err})") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def speech_positions(self, mel_frames: int) -> int:
        """The LLM positions `mel_frames` of speech take alone: the embeddings the encoder's and the
        adaptor's strides leave (their output_length), plus the speech bos and eos."""
        encoder_frames = self.encoder.output_length(mel_frames)
        return self.adaptor.output_length(encoder_frames) + 2

    def prompt_length_problem(
        self, prompt_tokens: int, max_new_tokens: int
    ) -> str | None:
        """Why a prompt of this many tokens does not fit (None if it does): the LLM's positions must hold it, the
        longest window's speech (30 s of it) and the answer. Checked before decoding, since a prompt far beyond them
        costs memory quadratic in its length before failing."""
        speech = self.speech_positions(self.max_mel_frames)
        room = self.llm.max_positions - speech  # for the prompt and the answer
        if prompt_tokens + max_new_tokens <= room:
            return None
        # no prompt could fit: the answer's length is what is wrong
        if max_new_tokens >= room:
            return (
                f"max_new_tokens {max_new_tokens} does not fit: this model's answers take at most "
                f"{max(room - prompt_tokens, 0)} new tokens after this {prompt_tokens}-token prompt "
                f"({self.llm.max_positions} positions, less {speech} for 30 s of speech)"
            )
        return (
            f"the prompt is {prompt_tokens} tokens; this model takes at most {room - max_new_tokens} "
            f"({self.llm.max_positions} positions, less {speech} for 30 s of speech and "
            f"{max_new_tokens} for the answer)"
        )


OSUM_PRESETS = {
    "osum": OSUMConfig(),  # the released model
    "osum-qwen2.5-0.5b": OSUMConfig(
        adaptor=AdaptorConfig(llm_dim=896),  # with OSUM's LoRA
        llm=replace(LLM_PRESETS["qwen2.5-0.5b"], lora_rank=8, lora_dropout=0.1),
    ),
    "tiny": OSUMConfig(  # fixture-sized, for tests and CPU experiments
        encoder=EncoderConfig(dim=64, heads=4, ff_dim=128, layers=2),
        adaptor=AdaptorConfig(dim=64, heads=4, ff_dim=256, layers=2, llm_dim=64),
        llm=Qwen2Config(
            vocab_size=1024,
            dim=64,
            ff_dim=128,
            layers=2,
            heads=4,
            kv_heads=2,
            lora_rank=8,
            lora_alpha=32,
            lora_dropout=0.1,
        ),
        eod_id=1000,
    ),
    # osum-mini (convert.py --mini, docs/mini.md): Whisper base, a 2-block adaptor, Qwen2.5-0.5B + LoRA.
    # Embeddings tied: the GGUF's Q8_0 output matrix serves both ends (its Q5_0 copy is coarser).
    # Strides (1, 2): 25 speech embeddings a second, room for a word's letters (align.py spells).
    "mini": OSUMConfig(
        encoder=ENCODER_PRESETS["whisper-base"],
        adaptor=AdaptorConfig(
            dim=512, heads=4, ff_dim=1280, layers=2, llm_dim=896, strides=(1, 2)
        ),
        llm=replace(LLM_PRESETS["qwen2.5-0.5b"], lora_rank=8, lora_dropout=0.1),
        name="osum-mini",
    ),
    "small": OSUMConfig(  # the CPU experiment: a Whisper tiny(.en) encoder, a 4x256 LLM trained whole (no LoRA)
        encoder=ENCODER_PRESETS["whisper-tiny"],
        adaptor=AdaptorConfig(dim=384, heads=4, ff_dim=1024, layers=2, llm_dim=256),
        llm=Qwen2Config(dim=256, ff_dim=768, layers=4, heads=8, kv_heads=2),
    ),
}


class OSUM(nn.Module):
    def __init__(self, config: OSUMConfig):
        super().__init__()
        self.config = config
        self.encoder = WhisperEncoder(config.encoder)
        self.adaptor = Adaptor(config.adaptor)
        self.llm = Qwen2(config.llm)
        # rows: speech bos, eos
        self.speech_bos_eos = nn.Parameter(torch.zeros(2, config.llm.dim))

    @classmethod
    def skeleton(cls, directory) -> "OSUM":
        """The model a converted directory's config.json describes, on the meta device (no memory)."""
        config_path = Path(directory) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{directory}: no config.json (convert a checkpoint with convert.py first)"
            )
        with torch.device("meta"):
            return cls(OSUMConfig.from_file(config_path))

    @classmethod
    def from_pretrained(
        cls,
        directory,
        device=None,
        dtype=None,
        for_training: bool = False,
        compile: bool | None = None,
        quantize: str | None = None,
    ) -> "OSUM":
        """A converted directory -> model in eval mode, readied for inference (`prepare_for_inference`) unless
        for_training=True, which keeps the weights as trained (LoRA apart, the usual layout) for an optimizer or
        FSDP. dtype: bf16 on CUDA, fp32 on CPU (load_for_inference chooses by memory). Each tensor goes from
        the memory-mapped files into its final form alone (quantize="int8": LoRA-merged and quantised), so
        loading peaks at the final model plus one tensor."""
        check_quantize(quantize)  # before loading, not after
        if for_training and (quantize or compile):
            raise ValueError(
                "compile and quantize are for inference: not with for_training=True"
            )
        device = torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = cls.skeleton(directory)
        # int8: each LLM linear is read, LoRA-merged and quantised alone, straight onto `device`
        convert = (lambda m, read: quantize_int8(m, device, read)) if quantize else None
        load_weights(
            model,
            directory,
            device="cpu" if quantize else device,
            dtype=dtype,
            convert=convert,
        )
        if not for_training:
            model.prepare_for_inference(device, compile, quantize)
        return model.eval()

    def prepare_for_inference(
        self, device, compile: bool | None = None, quantize: str | None = None
    ) -> "OSUM":
        """LoRA merged into the weights, then for the device's fastest decoding: with quantize="int8" every LLM
        linear still float stored as int8 (quantize.py; from_pretrained quantises them as it reads them, so no
        device ever holds the float LLM); on the CPU, weights laid out input-major for oneDNN (linear.py) unless
        compiled code streams them; decode steps (generate.fast_decoding) as CUDA graphs on CUDA, through
        torch.compile too with compile=True (int8 on CUDA compiles by default), eager with compile=False."""
        check_quantize(quantize)
        device = torch.device(device)
        if compile is None and quantize and device.type == "cuda":
            compile = True  # eager int8 dequantises whole weights each step: only compiled code fuses it away
        self.llm.merge_lora()
        if quantize:
            quantize_int8(self.llm, device=device)
            self.to(device)
        if not compile:
            use_input_major_weights(self)
        if compile or compile is None and device.type == "cuda":
            fast_decoding(self.llm, compile=bool(compile))
        return self

    def save_pretrained(self, directory, state_dict: dict | None = None) -> None:
        """Write config.json + safetensors that from_pretrained reads, with LoRA stored unmerged.

        state_dict: the weights to write instead of the module's own (an FSDP run gathers them from the shards)."""
        if any(isinstance(module, Int8Linear) for module in self.llm.modules()):
            raise ValueError(
                f"{directory}: an int8-quantised model is not saved (quantize when loading instead)"
            )
        was_merged = any(
            getattr(module, "merged", False) for module in self.llm.modules()
        )
        self.llm.unmerge_lora()
        directory = Path(directory)
        save_weights(
            directory,
            [
                (name, t.shape, t.dtype, lambda t=t: t.detach())
                for name, t in (state_dict or self.state_dict()).items()
            ],
        )
        (directory / "config.json").write_text(
            json.dumps(self.config.to_dict(), indent=1)
        )
        if was_merged:
            self.llm.merge_lora()

    @property
    def device(self) -> torch.device:
        return self.speech_bos_eos.device

    def embed_speech(
        self, mel: torch.Tensor, mel_lens: torch.Tensor, original_mask_rule: bool = True
    ):
        """mel (B, T, 80) zero-padded, mel_lens (B,) -> speech_embeds (B, S, H), speech_lens (B,).

        original_mask_rule=True equals the original's get_embedding_from_wav on a padded batch (docs/original.md §9.1);
        False makes each item's embeddings independent of the batch it is in.
        """
        dtype = self.speech_bos_eos.dtype
        mel_lens = mel_lens.to(self.device)
        x, lengths = self.encoder(
            mel.to(self.device, dtype), mel_lens, original_mask_rule
        )
        return self.adaptor(x, lengths)

    def _speech_alone(self, mel, mel_lens) -> list[torch.Tensor]:
        """Each item's speech embeddings (S_i, H), encoded alone: no compute goes to another
        item's padding, and an item gives in a batch what it gives alone."""
        speech = []
        for row in range(len(mel)):
            frames = int(mel_lens[row])
            # (1, S, H)
            embeds, _ = self.embed_speech(
                mel[row : row + 1, :frames],
                mel_lens[row : row + 1],
                original_mask_rule=False,
            )
            speech.append(embeds[0])
        return speech

    def _embed_ids(self, ids, dtype) -> torch.Tensor:
        """Token ids (a list) -> their embeddings (N, H) in `dtype`."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.llm.embed_tokens(ids).to(dtype)

    def _item(
        self, prompt, speech, label, label_ids=()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One item's segments end to end, in the original's order (docs/original.md §7):
        prompt (P, H), speech (S, H) and label (A, H) embeddings -> embeddings (N, H) and
        targets (N,): the label's ids on its slots, IGNORE_ID before. The order is set
        here alone: batching keeps any order right (sequence.py)."""
        dtype = speech.dtype
        bos, eos = self.speech_bos_eos.to(dtype)[:, None, :]  # (1, H) each
        embeds = torch.cat([prompt, bos, speech, eos, label])  # (P + 1 + S + 1 + A, H)
        unlabelled = torch.full((embeds.shape[0] - len(label_ids),), IGNORE_ID)
        targets = torch.cat([unlabelled, torch.as_tensor(label_ids, dtype=torch.long)])
        return embeds, targets.to(self.device)  # (N,)

    def sequences(self, prompt_ids, speech, labels=None) -> Sequences:
        """The LLM's batch: B prompts (id lists), B speech embeddings (S_i, H) and, in
        training, B labels (id lists), each item end to end, left-padded (sequence.py)."""
        labels = labels or [()] * len(speech)
        # every item's ids in one lookup: each lookup's backward writes a dense
        # (vocabulary, H) gradient, so one per segment made training 2.6x slower
        pieces = [list(ids) for pair in zip(prompt_ids, labels) for ids in pair]
        flat = self._embed_ids([i for ids in pieces for i in ids], speech[0].dtype)
        embedded = flat.split([len(ids) for ids in pieces])
        items = [
            self._item(embedded[2 * n], speech[n], embedded[2 * n + 1], labels[n])
            for n in range(len(speech))
        ]
        return left_padded(items)

    @torch.inference_mode()
    def generate(
        self,
        mel,
        mel_lens,
        prompt_ids,
        config: GenerationConfig | None = None,
        on_token=None,
        return_scores=False,
        keep_going=None,
        **settings,
    ):
        """Decode a batch: new token ids per item (ending with eos where hit). `config` (default: GenerationConfig's
        defaults with this model's eod as eos), with any GenerationConfig fields in `settings` replaced.

        Each item is the same math as alone (to float rounding: see generate.py).
        """
        config = replace(
            config or GenerationConfig(eos_token_id=self.config.eod_id), **settings
        )
        batch = self.sequences(prompt_ids, self._speech_alone(mel, mel_lens))
        return generate(
            self.llm,
            batch.inputs_embeds,
            batch.attention_mask,
            config,
            on_token=on_token,
            return_scores=return_scores,
            keep_going=keep_going,
        )

    def forward(self, mel, mel_lens, prompt_ids, labels) -> TrainingOutput:
        """The original's training loss on a batch: token-level mean cross-entropy over all label tokens, and each
        item's summed loss. mel (B, T, 80) zero-padded, mel_lens (B,), prompt_ids and labels: B lists of ids.

        The speech is encoded as one padded batch, as the original does (§9.1), then laid out like decoding's.
        """
        # (B, S, H)
        speech, speech_lens = self.embed_speech(mel, mel_lens, original_mask_rule=True)
        speech = [row[:length] for row, length in zip(speech, speech_lens.tolist())]
        logits, targets, rows = self._label_logits(prompt_ids, speech, labels)
        # (N_label_tokens,)
        token_losses = F.cross_entropy(logits, targets, reduction="none")
        # (B,)
        item_losses = torch.zeros(len(speech), device=self.device).index_add_(
            0, rows, token_losses.detach()
        )
        return TrainingOutput(token_losses.mean(), item_losses)

    def _label_logits(self, prompt_ids, speech, labels):
        """The LLM's float scores at each label token's slot (N, V), the label tokens (N,)
        and each one's item (N,), over the batch's label tokens in order."""
        batch = self.sequences(prompt_ids, speech, labels)
        # (B, L, H)
        hidden = self.llm.forward_hidden(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
        targets = batch.targets[:, 1:]  # (B, L - 1): slot t predicts slot t + 1
        predicts = targets != IGNORE_ID
        # (N, V)
        logits = self.llm.lm_head(hidden[:, :-1][predicts]).float()
        return logits, targets[predicts], predicts.nonzero()[:, 0]

    @torch.inference_mode()
    def token_logprobs(self, mel, mel_lens, prompt_ids, answers, top: int = 0):
        """Each answer's tokens scored after decoding, as the model gives them one by one: per item,
        per token, (log-probability, [(id, log-probability)] of the `top` likeliest). The model's own
        log-softmax, before repetition penalty, temperature or top-p, so it is the same whichever
        decoding chose the tokens (greedy, sampling, beam search)."""
        speech = self._speech_alone(mel, mel_lens)
        logits, targets, rows = self._label_logits(prompt_ids, speech, answers)
        logprobs = logits.log_softmax(-1)  # (N, V)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        best = logprobs.topk(top) if top else None
        scored = [[] for _ in answers]
        for n, row in enumerate(rows.tolist()):
            alternatives = (
                list(zip(best.indices[n].tolist(), best.values[n].tolist()))
                if best is not None
                else []
            )
            scored[row].append((chosen[n], alternatives))
        return scored

    def loss(self, mel, mel_lens, prompt_ids, labels) -> torch.Tensor:
        """The training loss alone: `forward(...).loss`."""
        return self(mel, mel_lens, prompt_ids, labels).loss


def load_for_inference(
    directory,
    tokenizer: Tokenizer | None,
    device=None,
    dtype=None,
    compile: bool | None = None,
    quantize: str | None = None,
    available: int | None = None,
) -> OSUM:
    """`OSUM.from_pretrained` for every front end (infer.py, the web page, the server, eval.py run), in the
    precision `choose_precision` picks for the memory there is (dtype / quantize: overrides; available: bytes,
    default the device's free memory), refusing a tokenizer (`tokenizer_or_none(directory)`, None: ids only)
    with ids past the model's vocabulary, which would index outside its embeddings."""
    check_quantize(quantize)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = choose_precision(
        OSUM.skeleton(directory), device, dtype, quantize, available
    )
    model = OSUM.from_pretrained(
        directory,
        device=device,
        dtype=precision.dtype,
        compile=compile,
        quantize=precision.quantize,
    )
    if tokenizer is not None:
        check_fits(
            tokenizer, model.config.llm.vocab_size, Path(directory) / RANK_FILE_NAME
        )
    return model
