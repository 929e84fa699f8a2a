"""Property-based fuzzing (Hypothesis) of every reader of untrusted input: the plan
parser, the SB3 zip reader, the zoo YAML reader and the device wire format. The
property is always the same: any input parses, or raises the module's typed
AutoquantError, never another exception. The device wire format's fuzz tests look
inside the targets room, so they live with its tests (``tests/targets/test_wire_fuzz.py``)
and share this folder's settings. Each module's docstring gives its examples
per run: 2,640 in all, about 15 s on 2 cores (each example under a 2 s deadline);
``AUTOQUANT_FUZZ_SCALE=N`` runs N times as many (15 took 3.5 minutes, all passing)."""
