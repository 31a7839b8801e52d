# expect: instances.www-3.ssh.Compression
# expect: ssh refuses it
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.ProxyJump = "jump"; };
  instances.www-2 = { system = "www"; ssh.ProxyJump = "jump"; };
  instances.www-3 = { system = "www"; ssh.ProxyJump = "jump"; ssh.Compression = "maybe"; };
}
