"""The two SDXL CLIP tokenizers (CLIP-L and CLIP-G), built offline from the OpenAI CLIP BPE file.

Both SDXL text encoders use the same 49,408-token byte-level BPE vocabulary; they differ only in padding:
CLIP-L pads with ``<|endoftext|>`` (49407), CLIP-G with ``"!"`` (id 0).

Text normalisation follows Fooocus's tokenizer, the slow ``transformers.CLIPTokenizer`` in an environment
without ``ftfy``: it falls back to BERT's ``BasicTokenizer`` (control and format characters such as the
zero-width joiner dropped, whitespace unified, a space around every CJK ideograph, NFC, lower case), then
applies CLIP's split pattern and byte-level BPE (see :func:`use_fooocus_normalization`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from tokenizers import Regex, normalizers
from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_G_PAD_TOKEN = "!"
CLIP_VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
# The CLIP vocabulary keeps 49152 - 256 - 2 merges; line 0 of the BPE file is a version header.
_MERGE_LINES = slice(1, 49152 - 256 - 2 + 1)


def clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` from the ``openai-clip`` package (located, never imported)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'openai-clip' package (module 'clip') is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{BPE_FILE_NAME} not found in the 'clip' package")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode character table (printable bytes map to themselves).

    The insertion order (printable bytes first, then the other bytes) defines the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Build the CLIP vocabulary (token → id) and the merge list from the gzipped BPE file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[_MERGE_LINES]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"unexpected CLIP vocabulary size {len(vocab)} from {bpe_path}")
    return vocab, merges


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_root() -> Path:
    """A writable cache folder: $XDG_CACHE_HOME (or ~/.cache)/foci/tokenizers, else the system temp dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "foci" / "tokenizers"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / "foci-tokenizers"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_tokenizer_files(bpe_path: Path) -> Path:
    """Write vocab.json + merges.txt for ``bpe_path`` into a cache folder keyed by the file's sha256."""
    target = _cache_root() / _file_sha256(bpe_path)
    if (target / "vocab.json").is_file() and (target / "merges.txt").is_file():
        return target
    vocab, merges = clip_vocab_and_merges(bpe_path)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=target.parent))
    (staging / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its files are identical
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return target


def fooocus_normalizer() -> normalizers.Normalizer:
    """BERT ``BasicTokenizer`` clean-up as the slow CLIP tokenizer applies it when ``ftfy`` is missing.

    In order: drop control/format characters (Unicode category C*: U+200D zero-width joiner, U+FEFF, …) and
    NUL/U+FFFD, map whitespace to a space, surround each CJK ideograph (not kana, not CJK punctuation) with
    spaces, no accent stripping; then NFC, whitespace runs to one space and lower case, as the fast CLIP
    tokenizer's own normaliser does.
    """
    return normalizers.Sequence([
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                   lowercase=False),
        normalizers.NFC(),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Lowercase(),
    ])


def use_fooocus_normalization(tokenizer: CLIPTokenizer) -> CLIPTokenizer:
    """Give a fast CLIP tokenizer Fooocus's text normalisation (:func:`fooocus_normalizer`); returns it."""
    tokenizer.backend_tokenizer.normalizer = fooocus_normalizer()
    return tokenizer


@functools.lru_cache(maxsize=4)
def _tokenizers_from_bpe(bpe_path: str) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    folder = _write_tokenizer_files(Path(bpe_path))
    common = dict(bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                  model_max_length=MODEL_MAX_LENGTH)
    tokenizer_l = CLIPTokenizer.from_pretrained(str(folder), pad_token=EOS_TOKEN, **common)
    tokenizer_g = CLIPTokenizer.from_pretrained(str(folder), pad_token=CLIP_G_PAD_TOKEN, **common)
    return use_fooocus_normalization(tokenizer_l), use_fooocus_normalization(tokenizer_g)


@functools.lru_cache(maxsize=4)
def _tokenizers_from_folder(folder: str) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    root = Path(folder)
    tokenizer_l = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    tokenizer_g = CLIPTokenizer.from_pretrained(str(root / "tokenizer_2"), local_files_only=True)
    return use_fooocus_normalization(tokenizer_l), use_fooocus_normalization(tokenizer_g)


def load_sdxl_tokenizers(folder: Path | None = None) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """Return ``(tokenizer_l, tokenizer_g)``.

    If ``folder`` holds diffusers-style ``tokenizer/`` and ``tokenizer_2/`` subfolders they are loaded from
    there; otherwise both are built from the CLIP BPE file. The pair is cached per process (shared objects:
    do not mutate them).
    """
    if folder is not None:
        root = Path(folder)
        if (root / "tokenizer").is_dir() and (root / "tokenizer_2").is_dir():
            return _tokenizers_from_folder(str(root.resolve()))
    return _tokenizers_from_bpe(str(clip_bpe_path()))
