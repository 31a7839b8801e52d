# expect: instances.www-1.ssh.Compression
# expect: ssh refuses it
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.Compression = "maybe"; };
}
