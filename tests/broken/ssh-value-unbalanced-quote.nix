# expect: instances.www-1.ssh.SendEnv
# expect: invalid quotes
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.SendEnv = "LANG 'LC_ALL"; };
}
