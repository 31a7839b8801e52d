# expect: instances.www-1.store
# expect: remote-program runs a program
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; store = "ssh-ng://portico?remote-program=/tmp/evil"; };
}
