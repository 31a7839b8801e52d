# expect: instances.www-1.ssh.LocalForward
# expect: open a port
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.LocalForward = "0.0.0.0:2222 localhost:22"; };
}
