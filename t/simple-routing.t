# PAGI::Simple routing over real sockets: every method helper, :param with
# and without constraints, *splat, groups with shared middleware, named
# routes and url_for, mount of a PAGI app and of a PSGI app (WrapPSGI) with
# root_path, 404, 405 with Allow, HEAD for GET routes, the trailing-slash
# policy, async handlers, hooks and PAGI middleware wrappers (use).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop stop_server);
use PAGI::Test::Simple qw(serve request);
use Future::AsyncAwait;
use PAGI::Simple;
use PAGI::App::WrapPSGI;

my $app = PAGI::Simple->new(name => 'routes');
for my $m (qw(get post put patch delete options)) {
    $app->$m('/m' => sub ($c) { $c->text(uc($m) . ' ' . $c->method) });
}
$app->head('/only-head' => sub ($c) { $c->header('x-head' => 'yes')->text('') });
$app->any('/any' => sub ($c) { $c->text('any ' . $c->method) });
$app->get('/users/:id<\d+>' => { name => 'user' }, sub ($c) { $c->json({ id => $c->path_params->{id} }) });
$app->get('/users/:name' => sub ($c) { $c->text("name $c->{path_params}{name}") });
$app->get('/files/*path' => { name => 'file' }, sub ($c) { $c->text('path=' . $c->path_params->{path}) });
$app->get('/posts/:year<\d{4}>/:slug' => { name => 'post' }, sub ($c) { $c->text(join ',', @{ $c->path_params }{qw(year slug)}) });
$app->get('/slow' => async sub ($c) {
    await loop()->delay_future(after => 0.05);
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
    return [ 200, [ 'Content-Type' => 'text/plain' ], [ "SCRIPT_NAME=$env->{SCRIPT_NAME} PATH_INFO=$env->{PATH_INFO}" ] ];
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

my ($server, $port) = serve($app);
my ($server2, $port2) = serve($redirecting);

for my $m (qw(GET POST PUT PATCH DELETE OPTIONS)) {
    my $r = request($port, $m, '/m');
    is("$r->{status} $r->{body}", "200 $m $m", "$m /m");
}
my $r = request($port, 'HEAD', '/m');
is($r->{status}, 200, 'HEAD is answered by the GET route');
is($r->{header}{'content-length'}, length('GET HEAD'), 'with the length the GET route computed');
is($r->{raw} =~ /\r\n\r\n(.*)\z/s && $1, '', 'and no body');
$r = request($port, 'HEAD', '/only-head');
is("$r->{status} $r->{header}{'x-head'}", '200 yes', 'an explicit HEAD route');
$r = request($port, 'PROPFIND', '/any');
is("$r->{status} $r->{body}", '200 any PROPFIND', 'any() takes every method');

$r = request($port, 'GET', '/users/42');
is($r->{body}, '{"id":"42"}', ':id<\d+> matches digits');
$r = request($port, 'GET', '/users/ann');
is($r->{body}, 'name ann', 'a failed constraint falls through to the next route');
$r = request($port, 'GET', '/files/a/b/c.txt');
is($r->{body}, 'path=a/b/c.txt', '*splat takes the rest of the path');
$r = request($port, 'GET', '/files/');
is($r->{body}, 'path=', '*splat may be empty');
$r = request($port, 'GET', '/posts/2025/hello');
is($r->{body}, '2025,hello', 'two captures');
$r = request($port, 'GET', '/posts/25/hello');
is($r->{status}, 404, 'a constrained year of two digits does not match');
$r = request($port, 'GET', '/slow');
is("$r->{status} $r->{body}", '200 awaited', 'an async handler is awaited');

$r = request($port, 'GET', '/links');
is($r->{body}, '{"file":"/files/a%20b/c.txt","post":"/posts/2025/hi?page=2","user":"/users/7"}', 'url_for fills named routes');
ok(!eval { $app->url_for(user => {}) }, 'url_for without a required parameter dies');
like($@, qr/missing parameter 'id'/, 'naming it');
ok(!eval { $app->url_for('nope') } && $@ =~ /no route named 'nope'/, 'url_for an unknown name dies naming it');

$r = request($port, 'GET', '/nowhere');
is("$r->{status} $r->{body}", '404 Not Found', '404 for an unknown path');
$r = request($port, 'POST', '/users/42');
is($r->{status}, 405, '405 when only other methods match');
is($r->{header}{allow}, 'GET, HEAD', 'Allow lists them');
is($r->{body}, 'Method Not Allowed', 'plain body');
is($r->{header}{'x-wrapped'}, '1', 'the PAGI middleware wrapper saw every response');

$r = request($port, 'GET', '/admin');
is("$r->{status} $r->{body}", '401 denied', 'group middleware guards the group');
$r = request($port, 'GET', '/admin', headers => [ [ 'X-Token', 'secret' ] ]);
is("$r->{status} $r->{body}", '200 admin home', "the group's '/' is the prefix itself");
$r = request($port, 'GET', '/admin/deep/x', headers => [ [ 'X-Token', 'secret' ] ]);
is($r->{body}, 'deep=1', 'nested group');
is(join(',', @order), 'before,auth,deep,route,handler,after', 'hooks, group, nested group, route middleware, handler, after hook');
$r = request($port, 'GET', '/admin/deep/x');
is($r->{status}, 401, 'the outer group middleware applies to the nested group');

$r = request($port, 'GET', '/api/v1/hello');
is($r->{body}, '{"link":"/api/v1/named","path":"/hello","root":"/api/v1"}', 'mounted PAGI app: root_path set, path inside the app, url_for with root_path');
$r = request($port, 'GET', '/api/v1x/hello');
is($r->{status}, 404, 'a mount prefix matches whole segments only');
$r = request($port, 'GET', '/legacy/a/b');
is($r->{body}, 'SCRIPT_NAME=/legacy PATH_INFO=/a/b', 'mounted PSGI app through WrapPSGI');

$r = request($port, 'GET', '/m/');
is($r->{status}, 404, 'default trailing-slash policy is strict');
$r = request($port2, 'GET', '/dir?x=1');
is("$r->{status} $r->{header}{location}", '301 /dir/?x=1', "trailing_slash => 'redirect' adds the slash");
$r = request($port2, 'GET', '/page/');
is("$r->{status} $r->{header}{location}", '301 /page', 'and removes it');
$r = request($port2, 'POST', '/page/');
is($r->{status}, 404, 'only GET and HEAD are redirected');

ok(!eval { $app->get('/x/*rest/more' => sub {}) } && $@ =~ /must be the last segment/, 'a splat in the middle is refused');
ok(!eval { PAGI::Simple->new(bogus => 1) } && $@ =~ /unknown option 'bogus'/, 'unknown options are named');

# Lifespan hooks run when the server starts and stops.
my @life;
my $lifeapp = PAGI::Simple->new;
$lifeapp->on(startup => sub ($a) { push @life, 'startup'; $a->stash->{ready} = 'yes' });
$lifeapp->on(shutdown => sub ($a) { push @life, 'shutdown' });
$lifeapp->get('/ready' => sub ($c) { $c->text($c->app->stash->{ready}) });
my ($server3, $port3) = serve($lifeapp);
is(request($port3, 'GET', '/ready')->{body}, 'yes', 'the startup hook ran before requests');
stop_server($server3);
is(join(',', @life), 'startup,shutdown', 'and the shutdown hook at shutdown');
my $failing = PAGI::Simple->new;
$failing->on(startup => sub ($a) { die "no database\n" });
ok(!eval { serve($failing); 1 }, 'a dying startup hook fails the startup');
like($@, qr/no database/, 'with its message');

stop_server($server);
stop_server($server2);
done_testing;
