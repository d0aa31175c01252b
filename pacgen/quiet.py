"""Library notices this project does not want printed, hidden one by one (never whole loggers or categories).

transformers says, for each image processor that diffusers imports, that torchvision is missing and that it falls
back to a PIL processor. That fallback is this project's choice (PyPI's torchvision does not import beside the
CPU torch wheel: docs/ENVIRONMENT.md), and no PACGen model uses an image processor, so every command and every
app start would print two lines of noise. Other warnings, of transformers' too, still reach the terminal.
"""

from __future__ import annotations

import logging

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
_LOGGER = "transformers.utils.import_utils"  # where transformers logs it from


class _Without(logging.Filter):
    """Drops the records whose message contains `text`; lets every other through."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def hide_torchvision_fallback_notice() -> None:
    """Call before anything imports diffusers (the CLI and app entry points do); calling again adds nothing."""
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, _Without) and f.text == TORCHVISION_FALLBACK for f in logger.filters):
        logger.addFilter(_Without(TORCHVISION_FALLBACK))
