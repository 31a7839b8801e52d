# expect: instances.www-2.ssh.ServerAliveCountMax
# expect: ssh refuses it
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; };
  instances.www-2 = { system = "www"; ssh.ServerAliveCountMax = "three"; };
  instances.www-3 = { system = "www"; ssh.ServerAliveCountMax = "three"; ssh.Compression = "maybe"; };
}
