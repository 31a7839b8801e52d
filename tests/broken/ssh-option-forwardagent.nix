# expect: instances.www-1.ssh.ForwardAgent
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.ForwardAgent = "yes"; };
}
