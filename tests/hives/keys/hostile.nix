# Hostile key sources (tests/test_keys_hostile.py), on two lab hosts: portico gets binary keys
# (a keyCommand writing every byte value and invalid UTF-8, a keyCommand writing
# KEYTEST_LARGE_BYTES random bytes seeded by KEYTEST_SEED, a keyFile the test fills with
# binary bytes); www-1 gets a keyCommand that never ends (it starts a child that never ends
# either; both carry KEYTEST_MARKER in their argv) with a deadline of KEYTEST_HANG_TIMEOUT s.
# KEYTEST_PYTHON is the interpreter the commands run.
let
  host = import ./lab-host.nix ./instances.json;
  env = builtins.getEnv;
  python = env "KEYTEST_PYTHON";
in
{
  signingKey = ./secrets/hive.sec;
  keys.binary.keyCommand = [ python "-c"
    "import sys; sys.stdout.buffer.write(bytes(range(256)) + b'\\xff\\xfe\\xc3\\x28\\xed\\xa0\\x80\\x00')" ];
  keys.large.keyCommand = [ python "-c"
    "import random, sys; sys.stdout.buffer.write(random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2])))"
    (env "KEYTEST_SEED") (env "KEYTEST_LARGE_BYTES") ];
  keys.binary-file = { keyFile = ./secrets/binary; destination = "/run/keys/files/binary"; permissions = "0400"; };
  keys.hang = {
    keyCommand = [ python "-c"
      "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', sys.argv[1] + '-child']); time.sleep(1000)"
      (env "KEYTEST_MARKER") ];
    keyCommandTimeout = builtins.fromJSON (env "KEYTEST_HANG_TIMEOUT");
  };
  systems.plain = {
    configuration = { networking.hostName = "plain"; };
    keys = [ "binary" "large" "binary-file" ];
  };
  instances.portico = host "portico" { system = "plain"; };
  instances.www-1 = host "www-1" { system = "plain"; keys = [ "hang" ]; };
}
