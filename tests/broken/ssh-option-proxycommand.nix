# expect: instances.web-1.ssh: "ProxyCommand" is not an ssh_config option name
# expect: no option that runs a command on this machine
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.ProxyCommand = "sh -c 'touch /tmp/pwned'"; };
}
