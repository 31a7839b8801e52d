# expect: missing attribute instances
{
  systems.web = { configuration = { }; };
}
