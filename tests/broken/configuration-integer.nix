# expect: systems.web.configuration: an integer is not a NixOS module
{
  systems.web = { configuration = 42; };
  instances.web-1 = { system = "web"; };
}
