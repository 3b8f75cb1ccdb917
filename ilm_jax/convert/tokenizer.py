"""A tokenizer for the LLM: ``tokenizers`` plus BOS/EOS ids and a chat template.

Built from an HF ``tokenizer.json`` (with ``tokenizer_config.json`` beside it
for the special tokens and chat template) or, by ``gguf_tokenizer``, from the
metadata of a GGUF file.

Why not transformers' ``AutoTokenizer``: the packaged SmolLM2 and Gemma
weights come as GGUF files with no HF folder, and both sources must give the
same small object; ``tokenizers`` (what ``AutoTokenizer`` wraps) does the
tokenising either way, and its post-processor decides BOS as transformers
would (``tests/test_llm_convert.py`` compares the two on a Llama-3-style
folder).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import tokenizers

from ilm_jax import files

# Gemma GGUF files carry no chat template; this is Gemma's documented turn
# format (a system message is folded into the first user turn).
GEMMA_CHAT_TEMPLATE = (
  "{{ bos_token }}"
  "{% if messages[0]['role'] == 'system' %}"
  "{% set sys = messages[0]['content'] + '\\n\\n' %}"
  "{% set turns = messages[1:] %}"
  "{% else %}{% set sys = '' %}{% set turns = messages %}{% endif %}"
  "{% for message in turns %}"
  "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' "
  "else message['role']) + '\\n' }}"
  "{{ (sys if loop.first else '') + message['content'] | trim }}"
  "{{ '<end_of_turn>\\n' }}"
  "{% endfor %}"
  "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


class Tokenizer:
  """Text <-> token ids for one LLM.

  Attributes:
    backend: the ``tokenizers.Tokenizer``.
    bos_id: beginning-of-sequence id, or None.
    eos_ids: ids that end generation (EOS and, for chat models, end of turn).
    pad_id: id used to pad batches.
    add_bos: ``encode`` prepends BOS by default.
    chat_template: a Jinja template over ``messages``, or None.
  """

  def __init__(
    self,
    backend: tokenizers.Tokenizer,
    *,
    bos_id: int | None,
    eos_ids: Sequence[int],
    pad_id: int,
    add_bos: bool,
    chat_template: str | None = None,
  ):
    self.backend = backend
    self.bos_id = bos_id
    self.eos_ids = tuple(eos_ids)
    self.pad_id = pad_id
    self.add_bos = add_bos
    self.chat_template = chat_template

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.backend.id_to_token(token_id)

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of ``text``; BOS is prepended per ``add_bos`` (default: the
    tokenizer's own setting) unless the text already starts with it."""
    ids = self.backend.encode(text, add_special_tokens=False).ids
    add_bos = self.add_bos if add_bos is None else add_bos
    if add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self.backend.decode(
      [int(i) for i in ids], skip_special_tokens=skip_special
    )

  def apply_chat_template(
    self, messages: Sequence[dict], add_generation_prompt: bool = True
  ) -> str:
    """Renders chat messages (``{"role", "content"}`` dicts) as prompt text.

    Raises:
      ValueError: the tokenizer has no chat template.
    """
    if not self.chat_template:
      raise ValueError("this tokenizer has no chat template")
    import jinja2.sandbox  # Only chat formatting needs jinja2.

    def raise_exception(message):
      raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True
    )
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(self.chat_template)
    special = lambda i: "" if i is None else self.id_to_token(i)
    return template.render(
      messages=list(messages),
      add_generation_prompt=add_generation_prompt,
      bos_token=special(self.bos_id),
      eos_token=special(self.eos_ids[0] if self.eos_ids else None),
    )

  def save(self, directory: str | pathlib.Path) -> None:
    """Writes tokenizer.json and tokenizer_config.json (HF layout), so that
    ``load_tokenizer_json(directory)`` gives this tokenizer back."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self.backend.save(str(directory / "tokenizer.json"))
    token = lambda i: None if i is None else self.id_to_token(i)
    config = {
      "bos_token": token(self.bos_id),
      "eos_token": token(self.eos_ids[0]) if self.eos_ids else None,
      "pad_token": token(self.pad_id),
      "add_bos_token": self.add_bos,
      "additional_eos_tokens": [token(i) for i in self.eos_ids[1:]],
      "chat_template": self.chat_template,
    }
    files.write_json(
      directory / "tokenizer_config.json", config, ensure_ascii=False
    )

  def encode_chat(
    self, messages: Sequence[dict], add_generation_prompt: bool = True
  ) -> list[int]:
    """Token ids of a chat prompt (BOS as the template or tokenizer says)."""
    return self.encode(
      self.apply_chat_template(messages, add_generation_prompt)
    )


def _special_id(config: dict, key: str, backend) -> int | None:
  token = config.get(key)
  if isinstance(token, dict):
    token = token.get("content")
  return None if token is None else backend.token_to_id(token)


def _post_processor_adds(backend: tokenizers.Tokenizer, token_id: int) -> bool:
  """Whether ``backend``'s post-processor prepends ``token_id``."""
  with_special = backend.encode("a", add_special_tokens=True).ids
  plain = backend.encode("a", add_special_tokens=False).ids
  return with_special[:1] == [token_id] and plain[:1] != [token_id]


def load_tokenizer_json(directory_or_file: str | pathlib.Path) -> Tokenizer:
  """A Tokenizer from ``tokenizer.json`` (+ ``tokenizer_config.json``).

  Args:
    directory_or_file: an HF checkpoint directory or its tokenizer.json.
  """
  path = pathlib.Path(directory_or_file)
  if path.is_dir():
    path = path / "tokenizer.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found")
  backend = tokenizers.Tokenizer.from_file(str(path))
  config_path = path.with_name("tokenizer_config.json")
  config = files.read_json(config_path) if config_path.exists() else {}
  eos = _special_id(config, "eos_token", backend)
  extra = config.get("additional_eos_tokens") or [
    "<end_of_turn>",
    "<|eot_id|>",
    "<|im_end|>",
  ]
  eos_ids = []
  for token_id in [eos, *(backend.token_to_id(t) for t in extra)]:
    if token_id is not None and token_id not in eos_ids:
      eos_ids.append(token_id)
  pad = _special_id(config, "pad_token", backend)
  bos = _special_id(config, "bos_token", backend)
  add_bos = config.get("add_bos_token")
  if add_bos is None:
    # Llama-3-style files say nothing in tokenizer_config.json: BOS comes
    # from tokenizer.json's post-processor, which the library applies when
    # asked for special tokens. Ask it, rather than guess per model family.
    add_bos = bos is not None and _post_processor_adds(backend, bos)
  template = config.get("chat_template")
  if template is None and path.with_name("chat_template.jinja").exists():
    template = path.with_name("chat_template.jinja").read_text()
  return Tokenizer(
    backend,
    bos_id=bos,
    eos_ids=eos_ids,
    pad_id=pad if pad is not None else (eos_ids[0] if eos_ids else 0),
    add_bos=bool(add_bos),
    chat_template=template,
  )
