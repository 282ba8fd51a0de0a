"""The ``mlq`` command: composes the layers (producer, workers, models) into one CLI,
and runs the embedded servers and the standalone stack."""
