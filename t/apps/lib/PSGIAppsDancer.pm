package PSGIAppsDancer;
# A Dancer2 app for t/psgi-apps-dancer2.t: routes with route and query
# parameters, a form, an upload, a Dancer2::Session::Simple session (found
# again by its cookie) and a `delayed` streaming response.
use strict;
use warnings;
use Dancer2;
use Digest::SHA ();
use Time::HiRes ();
use PSGIAppsLater qw(later);

set session      => 'Simple';
set content_type => 'text/plain';
set charset      => 'UTF-8';
set logger       => 'console';
set log          => 'warning';

get '/' => sub { "Hello from Dancer2\n" };

get '/hello/:name' => sub {
    'Hello, ' . route_parameters->get('name') . ' (greeting: ' . (query_parameters->get('greeting') // '-') . ")\n";
};

post '/form' => sub {
    my $p = body_parameters;
    'name=' . $p->get('name') . "\ncolours=" . join(',', $p->get_all('colour')) . "\n";
};

post '/upload' => sub {
    my $upload = upload('file') or send_error("no file field\n", 400);
    'title=' . body_parameters->get('title') . "\nfilename=" . $upload->filename
        . "\ncontent-type=" . $upload->type . "\nsize=" . $upload->size
        . "\nsha1=" . Digest::SHA::sha1_hex($upload->content) . "\n";
};

get '/counter' => sub {
    my $count = (session('count') // 0) + 1;
    session count => $count;
    "count=$count\n";
};

# Streaming: flush sends the headers, each `content` a piece; the timer's
# callback is wrapped in `delayed` so it keeps the request's context.
get '/stream' => sub {
    my $env = request->env;
    delayed {
        content_type "text/plain";
        flush;
        content sprintf "first at %.6f\n", Time::HiRes::time;
        later($env, 0.6, delayed {
            content sprintf "second at %.6f\n", Time::HiRes::time;
            later($env, 0.3, delayed {
                content "done\n";
                done;
            });
        });
    };
};

1;
