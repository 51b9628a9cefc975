"""Ring (reasoning) family: Ling's architecture, answers as `<think>` reasoning `</think>` answer."""
