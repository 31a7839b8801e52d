# expect: instances: a list is not an attribute set
{
  systems.web = { configuration = { }; };
  instances = [ { name = "web-1"; system = "web"; } ];
}
