"""The corpus build: text (Debian's documentation packages, or a folder of .txt files) -> SentencePiece
tokenizer -> shards in the official format -> audit -> manifest. `recur data build` runs it."""
from .build import BuildOptions, build, is_finished

__all__ = ["BuildOptions", "build", "is_finished"]
