# expect: instances.web-1.ssh: "web-1.example.org" is not an attribute set
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh = "web-1.example.org"; };
}
