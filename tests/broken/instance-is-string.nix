# expect: instances.web-1: "web" is not an attribute set
{
  systems.web = { configuration = { }; };
  instances.web-1 = "web";
}
