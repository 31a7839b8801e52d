# expect: instances.web-1.ssh.Port: 70000 is not a TCP port
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.Port = 70000; };
}
