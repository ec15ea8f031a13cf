"""The one error type of a conversion: one line naming the file and the key or tensor."""


class HFConvertError(ValueError):
  """A Hugging Face directory or one of our checkpoints cannot be converted; the message says which
  file and which key or tensor, and what would be accepted."""
