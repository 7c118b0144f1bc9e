"""Stage 1: the Beam encode job (``python -m pipeline.encode``)."""

import logging

# Importing Beam logs notices about optional Google Cloud clients through the root logger,
# which configures it on the spot and prints them. Until the job sets up its own logging
# (``pipeline.encode.configure_logging``), such import-time records go nowhere.
if not logging.getLogger().handlers:
    logging.getLogger().addHandler(logging.NullHandler())
