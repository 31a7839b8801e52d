# expect: instances.web-1.ssh: Hostname and HostName are one option: give it once
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh = { Hostname = "10.0.0.1"; HostName = "10.0.0.2"; }; };
}
