# bench/compare-simple.pl: the PAGI::Simple side. The announcement's first two
# routes, written the way its "Getting started" writes them.
use PAGI::Simple;
my $app = PAGI::Simple->new(name => 'Bench');
$app->get('/' => sub ($c) { $c->text('Hello, World!') });
$app->get('/users/:id' => sub ($c) { my $id = $c->path_params->{id}; $c->json({ user_id => $id }) });
$app->to_app;
