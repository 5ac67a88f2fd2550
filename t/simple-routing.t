# PAGI::Simple routing, in process through PAGI::Test::Client: every method
# helper, :param with and without constraints, *splat, groups with shared
# middleware, named routes and url_for, mount of a PAGI app and of a PSGI app
# (WrapPSGI) with root_path, 404, 405 with Allow, HEAD for GET routes, the
# trailing-slash policy, async handlers, hooks, PAGI middleware wrappers
# (use) and lifespan hooks.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Simple qw(client);
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Simple;
use PAGI::App::WrapPSGI;

local $SIG{ALRM} = sub { die "simple-routing.t: timed out\n" };
alarm 120;

my $loop = IO::Async::Loop->new;
my $app = PAGI::Simple->new(name => 'routes');
for my $m (qw(get post put patch delete options)) {
    $app->$m('/m' => sub ($c) { $c->text(uc($m) . ' ' . $c->method) });
}
$app->head('/only-head' => sub ($c) { $c->header('x-head' => 'yes')->text('') });
$app->any('/any' => sub ($c) { $c->text('any ' . $c->method) });
$app->del('/del' => sub ($c) { $c->text('del ' . $c->method) });
$app->route(PURGE => '/cache' => sub ($c) { $c->text('purged') });
$app->get('/users/:id<\d+>' => { name => 'user' }, sub ($c) { $c->json({ id => $c->path_params->{id} }) });
$app->get('/users/:name' => sub ($c) { $c->text("name $c->{path_params}{name}") });
$app->get('/files/*path' => { name => 'file' }, sub ($c) { $c->text('path=' . $c->path_params->{path}) });
$app->get('/posts/:year<\d{4}>/:slug' => { name => 'post' }, sub ($c) { $c->text(join ',', @{ $c->path_params }{qw(year slug)}) });
$app->get('/slow' => async sub ($c) {
    await $loop->delay_future(after => 0.05);
    await $c->text('awaited');
});
$app->get('/links' => sub ($c) {
    $c->json({ user => $c->url_for(user => { id => 7 }), file => $c->url_for(file => { path => 'a b/c.txt' }),
               post => $c->url_for(post => { year => 2025, slug => 'hi', page => 2 }) });
});

my @order;
$app->middleware(auth => sub ($c, $next) {
    return $c->text('denied', 401) unless ($c->req->header('x-token') // '') eq 'secret';
    push @order, 'auth';
    return $next->();
});
$app->hook(before => sub ($c) { @order = ('before') });
$app->hook(after => sub ($c) { push @order, 'after' });
$app->group('/admin' => ['auth'] => sub ($app) {
    $app->get('/' => sub ($c) { push @order, 'handler'; $c->text('admin home') });
    $app->group('/deep' => [ sub ($c, $next) { push @order, 'deep'; $c->stash->{deep} = 1; $next->() } ] => sub ($app) {
        $app->get('/x' => [ sub ($c, $next) { push @order, 'route'; $next->() } ], sub ($c) {
            push @order, 'handler';
            $c->text("deep=$c->{stash}{deep}");
        });
    });
});

# A mounted PAGI app sees root_path; a mounted PSGI app sees SCRIPT_NAME/PATH_INFO.
my $inner = PAGI::Simple->new(name => 'inner');
$inner->get('/hello' => sub ($c) { $c->json({ root => $c->scope->{root_path}, path => $c->path, link => $c->url_for('inner_hello') }) });
$inner->get('/named' => { name => 'inner_hello' }, sub ($c) { $c->text('n') });
$app->mount('/api/v1' => $inner);
$app->mount('/legacy' => PAGI::App::WrapPSGI->new(psgi_app => sub {
    my $env = shift;
    my $body = '';
    if (my $len = $env->{CONTENT_LENGTH}) { $env->{'psgi.input'}->read($body, $len) }
    return [ 200, [ 'Content-Type' => 'text/plain' ],
             [ "SCRIPT_NAME=$env->{SCRIPT_NAME} PATH_INFO=$env->{PATH_INFO} QUERY=$env->{QUERY_STRING} "
               . "METHOD=$env->{REQUEST_METHOD} BODY=$body" ] ];
})->to_app);

# A PAGI middleware wrapper around the whole app.
$app->use(sub ($next_app) {
    async sub ($scope, $receive, $send) {
        await $next_app->($scope, $receive, async sub ($ev) {
            push @{ $ev->{headers} }, [ 'x-wrapped', '1' ] if $ev->{type} eq 'http.response.start';
            await $send->($ev);
        });
    };
});

my $redirecting = PAGI::Simple->new(trailing_slash => 'redirect');
$redirecting->get('/dir/' => sub ($c) { $c->text('dir') });
$redirecting->get('/page' => sub ($c) { $c->text('page') });

my $client = client($app);
my $client2 = client($redirecting);
sub line ($r) { $r->status . ' ' . $r->content }

for my $m (qw(GET POST PUT PATCH DELETE OPTIONS)) {
    is(line($client->request($m, '/m')), "200 $m $m", "$m /m");
}
my $r = $client->head('/m');
is($r->status, 200, 'HEAD is answered by the GET route');
is($r->header('content-length'), length('GET HEAD'), 'with the length the GET route computed');
is(join('', $r->chunks), '', 'and the app sent no body bytes');
$r = $client->head('/only-head');
is($r->status . ' ' . $r->header('x-head'), '200 yes', 'an explicit HEAD route');
$r = $client->request('PROPFIND', '/any');
is(line($r), '200 any PROPFIND', 'any() takes every method');
is(line($client->delete('/del')), '200 del DELETE', 'del() is delete()');
is(line($client->request('PURGE', '/cache')), '200 purged', 'route() takes any method name');
$r = $client->get('/cache');
is($r->status . ' ' . $r->header('allow'), '405 PURGE', 'and only that one');

$r = $client->get('/users/42');
is($r->content, '{"id":"42"}', ':id<\d+> matches digits');
$r = $client->get('/users/ann');
is($r->content, 'name ann', 'a failed constraint falls through to the next route');
$r = $client->get('/files/a/b/c.txt');
is($r->content, 'path=a/b/c.txt', '*splat takes the rest of the path');
$r = $client->get('/files/');
is($r->content, 'path=', '*splat may be empty');
$r = $client->get('/files/a%20b/%C3%A9.txt');
is($r->text, "path=a b/\x{e9}.txt", 'path params are decoded text');
$r = $client->get('/posts/2025/hello');
is($r->content, '2025,hello', 'two captures');
$r = $client->get('/posts/25/hello');
is($r->status, 404, 'a constrained year of two digits does not match');
$r = $client->get('/slow');
is(line($r), '200 awaited', 'an async handler is awaited');

$r = $client->get('/links');
is($r->content, '{"file":"/files/a%20b/c.txt","post":"/posts/2025/hi?page=2","user":"/users/7"}', 'url_for fills named routes');
ok(!eval { $app->url_for(user => {}) }, 'url_for without a required parameter dies');
like($@, qr/missing parameter 'id'/, 'naming it');
ok(!eval { $app->url_for('nope') } && $@ =~ /no route named 'nope'/, 'url_for an unknown name dies naming it');
is($app->url_for(user => { id => 7, tab => 'a&b' }), '/users/7?tab=a%26b', 'extra parameters become an escaped query');

$r = $client->get('/nowhere');
is(line($r), '404 Not Found', '404 for an unknown path');
$r = $client->post('/users/42');
is($r->status, 405, '405 when only other methods match');
is($r->header('allow'), 'GET, HEAD', 'Allow lists them');
is($r->content, 'Method Not Allowed', 'plain body');
is($r->header('x-wrapped'), '1', 'the PAGI middleware wrapper saw every response');
$r = $client->request('PROPFIND', '/m');
is($r->header('allow'), 'DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT', 'Allow is sorted and complete');

$r = $client->get('/admin');
is(line($r), '401 denied', 'group middleware guards the group');
$r = $client->get('/admin', headers => { 'X-Token' => 'secret' });
is(line($r), '200 admin home', "the group's '/' is the prefix itself");
$r = $client->get('/admin/deep/x', headers => { 'X-Token' => 'secret' });
is($r->content, 'deep=1', 'nested group');
is(join(',', @order), 'before,auth,deep,route,handler,after', 'hooks, group, nested group, route middleware, handler, after hook');
$r = $client->get('/admin/deep/x');
is($r->status, 401, 'the outer group middleware applies to the nested group');

$r = $client->get('/api/v1/hello');
is($r->content, '{"link":"/api/v1/named","path":"/hello","root":"/api/v1"}', 'mounted PAGI app: root_path set, path inside the app, url_for with root_path');
$r = $client->get('/api/v1x/hello');
is($r->status, 404, 'a mount prefix matches whole segments only');
$r = $client->get('/legacy/a/b?x=1');
is($r->content, 'SCRIPT_NAME=/legacy PATH_INFO=/a/b QUERY=x=1 METHOD=GET BODY=', 'mounted PSGI app through WrapPSGI');
is($r->header('x-wrapped'), '1', 'behind the same PAGI middleware');
$r = $client->post('/legacy/form', body => 'k=v', headers => { 'Content-Type' => 'application/x-www-form-urlencoded' });
is($r->content, 'SCRIPT_NAME=/legacy PATH_INFO=/form QUERY= METHOD=POST BODY=k=v', 'the PSGI app reads the request body');
$r = $client->get('/legacy');
is($r->content, 'SCRIPT_NAME=/legacy PATH_INFO= QUERY= METHOD=GET BODY=', 'the prefix itself reaches the PSGI app with an empty PATH_INFO');

$r = $client->get('/m/');
is($r->status, 404, 'default trailing-slash policy is strict');
$r = $client->get('/users/42/');
is($r->status, 404, 'for parameterised routes too');
$r = $client2->get('/dir?x=1');
is($r->status . ' ' . $r->location, '301 /dir/?x=1', "trailing_slash => 'redirect' adds the slash");
$r = $client2->get('/page/');
is($r->status . ' ' . $r->location, '301 /page', 'and removes it');
$r = $client2->head('/page/');
is($r->status . ' ' . $r->location, '301 /page', 'HEAD is redirected too');
$r = $client2->post('/page/');
is($r->status, 404, 'only GET and HEAD are redirected');
is(line($client2->get('/dir/')), '200 dir', 'the route itself is served');

ok(!eval { $app->get('/x/*rest/more' => sub {}) } && $@ =~ /must be the last segment/, 'a splat in the middle is refused');
ok(!eval { PAGI::Simple->new(bogus => 1) } && $@ =~ /unknown option 'bogus'/, 'unknown options are named');

# Lifespan hooks run when the client starts and stops the app.
my @life;
my $lifeapp = PAGI::Simple->new;
$lifeapp->on(startup => sub ($a) { push @life, 'startup'; $a->stash->{ready} = 'yes' });
$lifeapp->on(shutdown => sub ($a) { push @life, 'shutdown' });
$lifeapp->get('/ready' => sub ($c) { $c->text($c->app->stash->{ready}) });
my $life_client = client($lifeapp);
is($life_client->get('/ready')->content, 'yes', 'the startup hook ran before requests');
is(join(',', @life), 'startup', 'once');
$life_client->stop;
is(join(',', @life), 'startup,shutdown', 'and the shutdown hook at shutdown');
my $failing = PAGI::Simple->new;
$failing->on(startup => sub ($a) { die "no database\n" });
ok(!eval { client($failing)->start; 1 }, 'a dying startup hook fails the startup');
like($@, qr/Lifespan startup failed: .*no database/, 'with its message');

$client->stop;
$client2->stop;
done_testing;
